"""Whole-register vectors in Numba kernels: loads (masked too), stores, lane shifts, fused multiply-adds, transposes.

A ``Vector`` is ``count`` machine vectors held as one LLVM vector value. A machine vector is one register
of the CPU Numba compiles for: 64 bytes (16 float32 or 8 float64 lanes) where it has AVX-512, 32 bytes (8 or
4) where it has not (``VECTOR_BYTES``). Kernels use them where LLVM's loop vectorizer cannot be led to the
code wanted: a block of output pixels whose accumulators stay in registers across a whole kernel window,
each input vector loaded once per tap. :func:`low_half` makes vectors of half that width, and the ``*_as``
intrinsics take their width from a vector given as ``like``, so that one helper serves both widths.

A run of ``count`` consecutive vectors is loaded through one address, so every load in the generated loop
is that address plus a constant (loads addressed one by one made LLVM keep one base pointer per load,
spilled to the stack: a second load per multiply-add). ``count`` must be a power of two: other lengths are
legalised lane by lane (the tap loops of 8x64x56x56 with a 7x7 kernel took 12.9 ms with runs of 7 and 21.3
with runs of 14, against 0.7 with runs of 8).
On a machine with AVX2 but without AVX-512, vectors of 64 bytes would be split in two by LLVM, and the
kernels' register blocks, sized for AVX-512's 32 registers, would no longer fit AVX2's 16: on a 2-core AMD
EPYC (Zen 3) the row pairs' D3 forward took 2.91 ms with 64-byte vectors and 1.83 with 32-byte ones, the 7x7
channel blocks (D9) 5.35 against 3.49 (``bench/results/cpu-notes-2026-12-07-zen3.md``). Without AVX2 LLVM
splits the 32-byte vectors: same results.

Every intrinsic takes arrays as they are, C-contiguous, and flat element indices; nothing checks bounds.
"""

import numpy as np
from llvmlite import ir
from numba import config, types
from numba.core import cgutils
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic, models, register_model

from ._jit import FASTMATH, helper


def _host_vector_bytes():
    """Bytes of one vector register of the CPU Numba compiles for: 64 with AVX-512, else 32.

    The features are Numba's own choice: ``NUMBA_CPU_FEATURES`` if set, else the host's (without AVX where
    ``NUMBA_ENABLE_AVX=0``). The disk cache keys compiled kernels on the same features, so a cache never
    serves a kernel built for the other width.
    """
    features = config.CPU_FEATURES
    if features is None:
        features = get_host_cpu_features()
    return 64 if "+avx512f" in features.split(",") else 32


VECTOR_BYTES = _host_vector_bytes()


class Vector(types.Type):
    """``count`` machine vectors of ``dtype``, end to end, as one value.

    A machine vector has ``lanes`` lanes: a whole register by default, fewer for the narrow vectors
    of :func:`low_half` (rows too short for a whole register).
    """

    def __init__(self, dtype, count=1, lanes=None):
        self.dtype = dtype
        self.count = count
        self.lanes = VECTOR_BYTES // (dtype.bitwidth // 8) if lanes is None else lanes
        super().__init__(name=f"Vector({dtype}, {self.lanes}x{count})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes * fe_type.count))


def lanes_for(dtype):
    """Lanes of one vector of a NumPy dtype (for callers in Python; kernels use :func:`lanes`)."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def _element_pointer(context, builder, array_type, array, index):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index], inbounds=True)


def _vector_pointer(context, builder, array_type, array, index, vector_type):
    pointer = _element_pointer(context, builder, array_type, array, index)
    return builder.bitcast(pointer, context.get_value_type(vector_type).as_pointer())


def _alignment(array_type):
    return array_type.dtype.bitwidth // 8


def _load_codegen(vector_type):
    """Code for a load of ``vector_type`` from ``array.flat[index:]`` (one address, element alignment)."""

    def codegen(context, builder, sig, args):
        pointer = _vector_pointer(context, builder, sig.args[0], args[0], args[1], vector_type)
        return builder.load(pointer, align=_alignment(sig.args[0]))

    return codegen


@intrinsic
def lanes(typingctx, array):
    """Lanes of one vector of the array's dtype, as a compile-time constant."""
    count = Vector(array.dtype).lanes

    def codegen(context, builder, sig, args):
        return ir.Constant(ir.IntType(64), count)

    return types.intp(array), codegen


@intrinsic
def load(typingctx, array, index):
    """One vector: ``array.flat[index : index + lanes]``."""
    vector_type = Vector(array.dtype)
    return vector_type(array, index), _load_codegen(vector_type)


def _compare_lanes(context, builder, n, predicate, bound, bound_type):
    """Build the ``n``-lane mask ``lane <predicate> bound`` (lane = 0, 1, ..., n - 1) for a scalar bound."""
    lane = ir.Constant(ir.VectorType(ir.IntType(64), n), list(range(n)))
    bound = context.cast(builder, bound, bound_type, types.int64)
    splat = builder.insert_element(ir.Constant(lane.type, ir.Undefined), bound, ir.Constant(ir.IntType(32), 0))
    splat = builder.shuffle_vector(splat, splat, ir.Constant(ir.VectorType(ir.IntType(32), n), [0] * n))
    return builder.icmp_signed(predicate, lane, splat)


def _load_from_codegen(vector_type):
    """Code for a load of ``vector_type`` from ``array.flat[index:]`` with lanes below ``first`` zeroed."""
    load_codegen = _load_codegen(vector_type)
    n = vector_type.lanes

    def codegen(context, builder, sig, args):
        value = load_codegen(context, builder, sig, args[:2])
        keep = _compare_lanes(context, builder, n, ">=", args[2], sig.args[2])
        return builder.select(keep, value, ir.Constant(value.type, None))

    return codegen


@intrinsic
def load_from_as(typingctx, array, index, first, like):
    """One vector ``array.flat[index : index + lanes]``, lanes ``0 .. first - 1`` set to zero.

    As many lanes as the vector ``like``.
    """
    vector_type = Vector(array.dtype, 1, like.lanes)
    return vector_type(array, index, first, like), _load_from_codegen(vector_type)


@intrinsic
def load_lanes(typingctx, array, index, count):
    """One vector: lanes ``l < count`` from ``array.flat[index + l]``, the others zero and never read.

    A masked load (``llvm.masked.load``): lanes from ``count`` on touch no memory, so the vector may run past
    the array's last element as long as the lanes kept lie inside it. ``count <= 0`` gives a vector of zeros
    without reading anything.
    """
    vector_type = Vector(array.dtype)
    n = vector_type.lanes

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        index = context.cast(builder, args[1], sig.args[1], types.int64)
        pointer = builder.gep(data, [index])  # not inbounds: with no lane kept it may lie past the array
        keep = _compare_lanes(context, builder, n, "<", args[2], sig.args[2])
        vtype = context.get_value_type(vector_type)
        i32 = ir.IntType(32)
        # The alignment operand is the form every LLVM since 3.x reads (later versions upgrade it).
        function = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(vtype, [pointer.type, i32, keep.type, vtype]),
            f"llvm.masked.load.v{n}{vtype.element.intrinsic_name}.p0",
        )
        alignment = ir.Constant(i32, _alignment(sig.args[0]))
        return builder.call(function, [pointer, alignment, keep, ir.Constant(vtype, None)])

    return vector_type(array, index, count), codegen


def _masked_load(context, builder, array_type, array, index, index_type, count, count_type, vtype):
    """Code for ``llvm.masked.load`` of ``vtype`` at ``array.flat[index]``, lanes below ``count`` kept."""
    data = context.make_array(array_type)(context, builder, array).data
    pointer = builder.gep(data, [context.cast(builder, index, index_type, types.int64)])  # may lie past the end
    keep = _compare_lanes(context, builder, vtype.count, "<", count, count_type)
    i32 = ir.IntType(32)
    function = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(vtype, [pointer.type, i32, keep.type, vtype]),
        f"llvm.masked.load.v{vtype.count}{vtype.element.intrinsic_name}.p0",
    )
    alignment = ir.Constant(i32, _alignment(array_type))
    return builder.call(function, [pointer, alignment, keep, ir.Constant(vtype, None)])


@intrinsic
def load_halves(typingctx, array, index_a, index_b, count):
    """One vector: lanes ``l < count`` of ``array.flat[index_a:]`` in its first half, of ``index_b`` in its second.

    Two masked loads of half a vector; the other lanes are zero and never read.
    """
    vector_type = Vector(array.dtype)
    n = vector_type.lanes

    def codegen(context, builder, sig, args):
        element = context.get_value_type(sig.args[0].dtype)
        half = ir.VectorType(element, n // 2)
        a = _masked_load(context, builder, sig.args[0], args[0], args[1], sig.args[1], args[3], sig.args[3], half)
        b = _masked_load(context, builder, sig.args[0], args[0], args[2], sig.args[2], args[3], sig.args[3], half)
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(n))))

    return vector_type(array, index_a, index_b, count), codegen


def _window(a, b, d, first):
    """Typing and code of a lane window: lanes ``first(n, d) .. + n - 1`` of ``a`` and ``b`` end to end."""
    if not (isinstance(a, Vector) and a == b and a.count == 1 and isinstance(d, types.IntegerLiteral)):
        return None
    n = a.lanes
    start = first(n, d.literal_value)
    if not 0 <= start <= n:
        return None

    def codegen(context, builder, sig, args):
        mask = ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(start, start + n)))
        return builder.shuffle_vector(args[0], args[1], mask)

    return a(a, b, d), codegen


@intrinsic
def window_before(typingctx, a, b, d):
    """Return ``b`` moved up by ``d`` lanes, the last ``d`` lanes of ``a`` coming in first (``d`` a literal).

    For vectors ``a``, ``b`` of consecutive columns: the vector of the columns ``d`` before ``b``'s, from
    one lane shift (``valignd`` on AVX-512) instead of a load that straddles two cache lines.
    """
    return _window(a, b, d, lambda n, d: n - d)


@intrinsic
def window_after(typingctx, a, b, d):
    """Return ``a`` moved down by ``d`` lanes, the first ``d`` lanes of ``b`` coming in last (``d`` a literal).

    For vectors ``a``, ``b`` of consecutive columns: the vector of the columns ``d`` after ``a``'s.
    """
    return _window(a, b, d, lambda n, d: d)


@intrinsic
def every_other(typingctx, a, b, first):
    """Return lanes ``first, first + 2, ...`` of ``a`` and ``b`` end to end (``first`` a literal 0 or 1).

    For vectors of consecutive columns: the even (0) or odd (1) columns of both, one two-source shuffle.
    """
    if not (isinstance(a, Vector) and a == b and a.count == 1 and isinstance(first, types.IntegerLiteral)):
        return None
    n, start = a.lanes, first.literal_value
    if start not in (0, 1):
        return None

    def codegen(context, builder, sig, args):
        mask = ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(start, 2 * n, 2)))
        return builder.shuffle_vector(args[0], args[1], mask)

    return a(a, b, first), codegen


@intrinsic
def store_lanes(typingctx, array, index, vector, count):
    """Write lanes ``0 .. count - 1`` of one vector to ``array.flat[index:]`` (``llvm.masked.store``).

    The other lanes touch no memory.
    """
    if not (isinstance(vector, Vector) and vector.count == 1):
        return None
    n = vector.lanes

    def codegen(context, builder, sig, args):
        pointer = _vector_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[2])
        keep = _compare_lanes(context, builder, n, "<", args[3], sig.args[3])
        vtype = context.get_value_type(sig.args[2])
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [vtype, pointer.type, i32, keep.type]),
            f"llvm.masked.store.v{n}{vtype.element.intrinsic_name}.p0",
        )
        builder.call(function, [args[2], pointer, ir.Constant(i32, _alignment(sig.args[0])), keep])
        return context.get_dummy_value()

    return types.none(array, index, vector, count), codegen


@intrinsic
def store_halves(typingctx, array, index_a, index_b, vector, count_a, count_b):
    """Write ``count_a`` lanes of a vector's first half to ``array.flat[index_a:]``, ``count_b`` of its second.

    The second half goes to ``array.flat[index_b:]``; two masked stores of half a vector.
    """
    if not (isinstance(vector, Vector) and vector.count == 1):
        return None
    n = vector.lanes

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        element = context.get_value_type(sig.args[0].dtype)
        half = ir.VectorType(element, n // 2)
        i32 = ir.IntType(32)
        for first, index, index_type, count, count_type in (
            (0, args[1], sig.args[1], args[4], sig.args[4]),
            (n // 2, args[2], sig.args[2], args[5], sig.args[5]),
        ):
            lanes = ir.Constant(ir.VectorType(i32, n // 2), list(range(first, first + n // 2)))
            part = builder.shuffle_vector(args[3], args[3], lanes)
            pointer = builder.gep(data, [context.cast(builder, index, index_type, types.int64)])
            keep = _compare_lanes(context, builder, n // 2, "<", count, count_type)
            function = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.VoidType(), [half, pointer.type, i32, keep.type]),
                f"llvm.masked.store.v{n // 2}{half.element.intrinsic_name}.p0",
            )
            builder.call(function, [part, pointer, ir.Constant(i32, _alignment(sig.args[0])), keep])
        return context.get_dummy_value()

    return types.none(array, index_a, index_b, vector, count_a, count_b), codegen


@intrinsic
def broadcast_halves(typingctx, array, index_a, index_b):
    """One vector whose first half lanes are ``array.flat[index_a]`` and second half ``array.flat[index_b]``."""
    vector_type = Vector(array.dtype)
    n = vector_type.lanes

    def codegen(context, builder, sig, args):
        vtype = context.get_value_type(vector_type)
        value = ir.Constant(vtype, ir.Undefined)
        i32 = ir.IntType(32)
        for lane, index in ((0, args[1]), (n // 2, args[2])):
            scalar = builder.load(_element_pointer(context, builder, sig.args[0], args[0], index))
            value = builder.insert_element(value, scalar, ir.Constant(i32, lane))
        lanes = ir.Constant(ir.VectorType(i32, n), [0] * (n // 2) + [n // 2] * (n // 2))
        return builder.shuffle_vector(value, value, lanes)

    return vector_type(array, index_a, index_b), codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Ask for the cache line holding ``array.flat[index]`` to be brought into the caches (a hint, not a load).

    ``llvm.prefetch`` for reading, into every level (locality 3): nothing is read into a register and an
    address outside the array raises no fault.
    """

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        pointer = builder.gep(data, [context.cast(builder, args[1], sig.args[1], types.int64)])
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [pointer.type, i32, i32, i32]), "llvm.prefetch.p0"
        )
        builder.call(function, [pointer, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(array, index), codegen


@intrinsic
def load_run(typingctx, array, index, count):
    """``count`` consecutive vectors (a literal power of two) from ``array.flat[index:]``, as one value."""
    if not isinstance(count, types.IntegerLiteral):
        return None
    vector_type = Vector(array.dtype, count.literal_value)
    return vector_type(array, index, count), _load_codegen(vector_type)


def _every_other_codegen(vector_type, first):
    """Code for a load of two vectors from ``array.flat[index:]`` keeping lanes ``first, first + 2, ...``."""
    pair_codegen = _load_codegen(Vector(vector_type.dtype, 2, vector_type.lanes))
    n = vector_type.lanes
    mask = ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(first, 2 * n, 2)))

    def codegen(context, builder, sig, args):
        pair = pair_codegen(context, builder, sig, args)
        return builder.shuffle_vector(pair, pair, mask)

    return codegen


@intrinsic
def load_even_as(typingctx, array, index, like):
    """One vector of every other element: ``array.flat[index : index + 2*lanes : 2]`` (reads one more).

    As many lanes as the vector ``like``.
    """
    vector_type = Vector(array.dtype, 1, like.lanes)
    return vector_type(array, index, like), _every_other_codegen(vector_type, 0)


@intrinsic
def load_odd_as(typingctx, array, index, like):
    """One vector of every other element from the second: ``array.flat[index + 1 : index + 2*lanes : 2]``.

    As many lanes as the vector ``like``. The same as ``load_even_as(array, index + 1, like)`` without
    reading past the last lane; from the same address as ``load_even_as(array, index, like)``, LLVM makes
    the pair one load for both.
    """
    vector_type = Vector(array.dtype, 1, like.lanes)
    return vector_type(array, index, like), _every_other_codegen(vector_type, 1)


@intrinsic
def store(typingctx, array, index, vector):
    """Write a vector (of any count) to ``array.flat[index:]``."""

    def codegen(context, builder, sig, args):
        pointer = _vector_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[2])
        builder.store(args[2], pointer, align=_alignment(array))
        return context.get_dummy_value()

    return types.none(array, index, vector), codegen


def _broadcast_codegen(vector_type):
    def codegen(context, builder, sig, args):
        scalar = builder.load(_element_pointer(context, builder, sig.args[0], args[0], args[1]))
        vtype = context.get_value_type(vector_type)
        one = builder.insert_element(ir.Constant(vtype, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), vector_type.lanes), [0] * vector_type.lanes)
        return builder.shuffle_vector(one, one, mask)

    return codegen


@intrinsic
def broadcast(typingctx, array, index):
    """One vector with every lane ``array.flat[index]`` (one load; no wraparound of negative indices)."""
    vector_type = Vector(array.dtype)
    return vector_type(array, index), _broadcast_codegen(vector_type)


@intrinsic
def broadcast_as(typingctx, array, index, like):
    """:func:`broadcast` with as many lanes as the vector ``like``."""
    vector_type = Vector(array.dtype, 1, like.lanes)
    return vector_type(array, index, like), _broadcast_codegen(vector_type)


@intrinsic
def low_half(typingctx, vector):
    """Return the first half of one vector's lanes as a vector of half the width.

    For rows too short for a whole register: 256-bit registers on AVX-512 machines.
    """
    if not (isinstance(vector, Vector) and vector.count == 1 and vector.lanes >= 2):
        return None
    half = Vector(vector.dtype, 1, vector.lanes // 2)

    def codegen(context, builder, sig, args):
        mask = ir.Constant(ir.VectorType(ir.IntType(32), half.lanes), list(range(half.lanes)))
        return builder.shuffle_vector(args[0], args[0], mask)

    return half(vector), codegen


@intrinsic
def lanes_of(typingctx, vector):
    """Lanes of one machine vector of a vector's type, as a compile-time constant."""
    if not isinstance(vector, Vector):
        return None

    def codegen(context, builder, sig, args):
        return ir.Constant(ir.IntType(64), vector.lanes)

    return types.intp(vector), codegen


@intrinsic
def tile(typingctx, vector, count):
    """``count`` copies of one vector, end to end (``count`` a literal)."""
    if not isinstance(count, types.IntegerLiteral):
        return None
    tiled = Vector(vector.dtype, count.literal_value)

    def codegen(context, builder, sig, args):
        mask = list(range(vector.lanes)) * tiled.count
        return builder.shuffle_vector(args[0], args[0], ir.Constant(ir.VectorType(ir.IntType(32), len(mask)), mask))

    return tiled(vector, count), codegen


@intrinsic
def zeros(typingctx, array, count):
    """``count`` vectors of zeros of the array's dtype (``count`` a literal)."""
    if not isinstance(count, types.IntegerLiteral):
        return None
    vector_type = Vector(array.dtype, count.literal_value)

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(vector_type), None)

    return vector_type(array, count), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """Return ``a * b + c`` lane by lane, rounded once."""
    if not (isinstance(a, Vector) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        vtype = args[0].type
        name = f"llvm.fma.v{vtype.count}{vtype.element.intrinsic_name}"
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vtype, [vtype] * 3), name)
        return builder.call(function, list(args))

    return a(a, b, c), codegen


@intrinsic
def add(typingctx, a, b):
    """Return ``a + b`` lane by lane, under the kernels' floating-point flags (``_jit.FASTMATH``).

    The flags let LLVM fold a sum of multiply-add chains into fewer chains (the row pairs' forward with a
    plain add ran 0.8x of one with them).
    """
    if not (isinstance(a, Vector) and a == b):
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1], flags=sorted(FASTMATH))

    return a(a, b), codegen


@intrinsic
def transpose(typingctx, source, source_index, source_stride, target, target_index, target_stride):
    """Move a square block of ``lanes`` rows: row ``r`` of the target is column ``r`` of the source.

    Source row ``r`` is the vector at ``source_index + r*source_stride``, target row ``r`` goes to
    ``target_index + r*target_stride``. Rows are swapped in halves, then quarters, and so on down to single
    lanes, each step one two-input shuffle per row (64 shuffles for float32).
    """
    vector_type = Vector(source.dtype)
    n = vector_type.lanes

    def codegen(context, builder, sig, args):
        src, src_index, src_stride, dst, dst_index, dst_stride = args
        i64 = ir.IntType(64)
        src_index, src_stride, dst_index, dst_stride = (
            context.cast(builder, value, sig.args[k], types.int64)
            for value, k in ((src_index, 1), (src_stride, 2), (dst_index, 4), (dst_stride, 5))
        )
        rows = []
        for r in range(n):
            index = builder.add(src_index, builder.mul(src_stride, ir.Constant(i64, r)))
            pointer = _vector_pointer(context, builder, sig.args[0], src, index, vector_type)
            rows.append(builder.load(pointer, align=_alignment(source)))
        half = n // 2
        while half >= 1:
            # Rows i and i + half (bit `half` of i clear) exchange their off-diagonal half-blocks.
            low = [j if j & half == 0 else n + j - half for j in range(n)]
            high = [j + half if j & half == 0 else n + j for j in range(n)]
            masks = [ir.Constant(ir.VectorType(ir.IntType(32), n), m) for m in (low, high)]
            for i in range(n):
                if i & half == 0:
                    a, b = rows[i], rows[i + half]
                    rows[i] = builder.shuffle_vector(a, b, masks[0])
                    rows[i + half] = builder.shuffle_vector(a, b, masks[1])
            half //= 2
        for r in range(n):
            index = builder.add(dst_index, builder.mul(dst_stride, ir.Constant(i64, r)))
            pointer = _vector_pointer(context, builder, sig.args[3], dst, index, vector_type)
            builder.store(rows[r], pointer, align=_alignment(target))
        return context.get_dummy_value()

    return types.none(source, source_index, source_stride, target, target_index, target_stride), codegen


@intrinsic
def _address(typingctx, array):
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.ptrtoint(data, ir.IntType(64))

    return types.int64(array), codegen


@helper
def store_count(array, index, vector, count):
    """Write the first ``count`` lanes of one vector to ``array.flat[index:]``: a plain store where all are."""
    if count >= lanes_of(vector):
        store(array, index, vector)
    else:
        store_lanes(array, index, vector, count)


@helper
def add_lanes(vectors, scratch, acc):
    """``acc[t] += sum of the lanes of vectors[t]`` for each vector of a tuple, in float64.

    ``scratch`` holds at least one vector's lanes; the lanes add up in order.
    """
    lanes = lanes_of(vectors[0])
    for t in range(len(vectors)):
        store(scratch, 0, vectors[t])
        total = 0.0
        for k in range(lanes):
            total += scratch[k]
        acc[t] += total


@helper
def add_halves(vectors, scratch, acc_a, acc_b):
    """``acc_a[t] +=`` the sum of the first half of ``vectors[t]``'s lanes, ``acc_b[t] +=`` the second's, in float64."""
    lanes = lanes_of(vectors[0])
    for t in range(len(vectors)):
        store(scratch, 0, vectors[t])
        a = 0.0
        for k in range(lanes // 2):
            a += scratch[k]
        b = 0.0
        for k in range(lanes // 2, lanes):
            b += scratch[k]
        acc_a[t] += a
        acc_b[t] += b


@helper
def aligned_empty(size, dtype):
    """Return an uninitialised 1-D array of ``size`` elements whose first one starts a 64-byte line.

    A vector load from an address that is not a multiple of 64 touches two cache lines: the tap loops of
    8x64x56x56 with a 7x7 kernel took 1.04 ms over unaligned buffers, 0.76 over aligned ones.
    """
    raw = np.empty(size + VECTOR_BYTES, dtype)
    skip = (_address(raw) % VECTOR_BYTES) // raw.itemsize
    start = (VECTOR_BYTES // raw.itemsize - skip) % (VECTOR_BYTES // raw.itemsize)
    return raw[start : start + size]


@helper
def aligned_zeros(size, dtype):
    """Return a zeroed 1-D array of ``size`` elements whose first one starts a 64-byte line."""
    zeros = aligned_empty(size, dtype)
    zeros[:] = 0
    return zeros
