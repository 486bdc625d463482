"""The int8 product: out[m, n] = sum_k a[m, k] * b[n, k], exact in int32: a int8 codes (M, K), b int8 (N, K) packed.

b comes packed as (N / 16, K / 4, 16, 4): for each block of 16 columns and each 4 consecutive k, the
16 columns' 4 bytes in a row (64 bytes, one zmm: VNNI's operand order). Two paths, a compile-time
parameter (`maxwhisper.int8.path` picks it from the CPU's flags):
- vnni: `vpdpbusd` multiplies unsigned by signed bytes, so a's codes are offset by 128 (a xor 0x80)
  and 128 * sum_k b[n, k] (`bsum`, computed once with the weights) is subtracted at the end;
- avx2: bytes widened to int16 and `vpmaddwd`, whose pair sums are exact (`pmaddubsw` would saturate).
Both are exact for |a|, |b| <= 127 and K * 127 * 255 < 2^31 (K up to 66000). Mojo 1.2 / MAX 26.7:
`parallelize` lives in max.algorithm and takes the closure as an argument.
"""

import extensibility

from max.gpu.host import DeviceContext
from max.algorithm import parallelize
from std.memory import bitcast, stack_allocation
from std.sys import llvm_intrinsic

from extensibility import InputTensor, OutputTensor

comptime NB = 4  # blocks of 16 columns per task (N is padded to a multiple of 64)


@extensibility.register("maxwhisper_int8_matmul")
struct Int8Matmul:
    @staticmethod
    def execute[
        target: StaticString,
        vnni: Bool,
    ](
        output: OutputTensor[dtype=DType.int32, rank=2, ...],
        a: InputTensor[dtype=DType.int8, rank=2, ...],
        b: InputTensor[dtype=DType.int8, rank=4, ...],
        bsum: InputTensor[dtype=DType.int32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        var pa = a.unsafe_ptr()
        var pb = b.unsafe_ptr()
        var ps = bsum.unsafe_ptr()
        var po = output.unsafe_ptr()
        var m = a.dim_size(0)
        var k = a.dim_size(1)
        var nblocks = b.dim_size(0)
        var n = nblocks * 16

        # one task per 64 columns, every row (a decoder step's one row splits its weight reads too);
        # the closure copies what it captures (Mojo 1.2's capture list)
        def task(t: Int) {var pa, var pb, var ps, var po, var m, var k, var n}:
            comptime if vnni:
                _vnni_panel(pa, pb, ps, po, m, k, n, t * NB)
            else:
                for jb in range(NB):
                    _avx2_block(pa, pb, po, m, k, n, t * NB + jb)

        parallelize(task, nblocks // NB)


@always_inline
def _vnni_panel(pa: UnsafePointer[Int8, MutAnyOrigin], pb: UnsafePointer[Int8, MutAnyOrigin], ps: UnsafePointer[Int32, MutAnyOrigin],
                po: UnsafePointer[Int32, MutAnyOrigin], m: Int, k: Int, n: Int, j0: Int):
    """Columns j0 * 16 .. + 64 of every row, 4 rows at a time: 16 zmm accumulators."""
    comptime MR = 4
    var kq = k // 4
    var i0 = 0
    while i0 < m:
        var acc = stack_allocation[MR * NB * 16, DType.int32]()
        comptime for t in range(MR * NB):
            acc.store(t * 16, SIMD[DType.int32, 16](0))
        for q in range(kq):
            comptime for r in range(MR):
                var row = min(i0 + r, m - 1)  # rows past the end repeat the last and are not stored
                var word = bitcast[DType.int32, 1]((pa + row * k + q * 4).load[width=4]()) ^ Int32(-2139062144)  # ^ 0x80808080: + 128
                var av = bitcast[DType.int8, 64](SIMD[DType.int32, 16](word))
                comptime for jb in range(NB):
                    var bv = (pb + ((j0 + jb) * kq + q) * 64).load[width=64]()
                    acc.store((r * NB + jb) * 16, llvm_intrinsic["llvm.x86.avx512.vpdpbusd.512", SIMD[DType.int32, 16]](
                        acc.load[width=16]((r * NB + jb) * 16), av, bv))
        comptime for r in range(MR):
            if i0 + r < m:
                comptime for jb in range(NB):
                    var col = (j0 + jb) * 16
                    (po + (i0 + r) * n + col).store(acc.load[width=16]((r * NB + jb) * 16) - (ps + col).load[width=16]())
        i0 += MR


@always_inline
def _avx2_block(pa: UnsafePointer[Int8, MutAnyOrigin], pb: UnsafePointer[Int8, MutAnyOrigin], po: UnsafePointer[Int32, MutAnyOrigin],
                m: Int, k: Int, n: Int, j: Int):
    """Columns j * 16 .. + 16 of every row, 2 rows at a time: 8 ymm accumulators, lane 2c + h of
    accumulator (r, g) summing column 4g + c over the pair h of each 4 k."""
    comptime MR = 2
    var kq = k // 4
    var i0 = 0
    while i0 < m:
        var acc = stack_allocation[MR * 4 * 8, DType.int32]()
        comptime for t in range(MR * 4):
            acc.store(t * 8, SIMD[DType.int32, 8](0))
        for q in range(kq):
            comptime for r in range(MR):
                var row = min(i0 + r, m - 1)
                var x4 = (pa + row * k + q * 4).load[width=4]().cast[DType.int16]()
                var xv = bitcast[DType.int16, 16](SIMD[DType.int64, 4](bitcast[DType.int64, 1](x4)))
                comptime for g in range(4):
                    var wv = (pb + (j * kq + q) * 64 + g * 16).load[width=16]().cast[DType.int16]()
                    acc.store((r * 4 + g) * 8, acc.load[width=8]((r * 4 + g) * 8)
                              + llvm_intrinsic["llvm.x86.avx2.pmadd.wd", SIMD[DType.int32, 8]](wv, xv))
        comptime for r in range(MR):
            if i0 + r < m:
                comptime for g in range(4):
                    var pair = acc.load[width=8]((r * 4 + g) * 8).deinterleave()
                    (po + (i0 + r) * n + j * 16 + g * 4).store(pair[0] + pair[1])
        i0 += MR
