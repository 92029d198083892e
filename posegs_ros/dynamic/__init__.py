"""Moving objects: moving-pixel detection, region tracking and motion groups."""
