"""numba intrinsics shared by the kernels: atomic work claiming and a vector-width hint."""

from __future__ import annotations

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefer_wide_vectors(typingctx):  # type: ignore[no-untyped-def]
    """Ask LLVM to vectorize the calling kernel with 512-bit vectors where the CPU has them."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        try:
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        except Exception:  # noqa: BLE001 - an optimization hint only
            pass
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def claim(typingctx, counter):  # type: ignore[no-untyped-def]
    """Atomically increment ``counter[0]`` (int64 array) and return its previous value: threads
    running the same kernel take work items one at a time (dynamic load balancing; which
    thread computes an item never changes its result)."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [context.get_constant(types.intp, 0)])
        return builder.atomic_rmw("add", ptr, context.get_constant(types.int64, 1), "monotonic")

    return types.int64(counter), codegen
