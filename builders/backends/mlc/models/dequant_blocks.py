"""How the library splits a quantized matrix's output rows for dequantize + matmul (models/layers.py).

A matrix of more than DEQUANT_ROWS output rows (a vocabulary-sized LM head) is dequantized and multiplied
a block of rows at a time and the blocks' outputs concatenated, so the library's working memory holds one
float16 block of the weight, never the whole dequantized table (151936 x 896 float16 = 272 MB for Qwen2.5).
The blocks are equal and a multiple of VEC_ROWS rows where the row count allows it: measured on Qwen2.5's
head (cpu library, 128-position batch_prefill), a concatenation of unequal blocks (9 x 16384 + 4480) took
4x as long as one of 8 equal blocks of 18992, which also beat the undivided head (2.0 s vs 2.1 s; decode
0.44 s vs 0.71 s a step). Row counts with no such split get the fewest blocks, the last one shorter.
"""

from __future__ import annotations

DEQUANT_ROWS = 32768  # at most this many output rows of a quantized matrix dequantized per matmul
VEC_ROWS = 16  # an equal block's rows are a multiple of this (cpu_schedule.VEC: whole vector tiles)


def row_blocks(rows: int) -> list[tuple[int, int]]:
    """(start, rows) of each block of a matrix with `rows` output rows: one block when it fits DEQUANT_ROWS;
    else the fewest equal blocks of a multiple of VEC_ROWS rows that tile it exactly (trying up to 4x the
    least count); else the least count of DEQUANT_ROWS-sized blocks, the last one shorter."""
    least = -(-rows // DEQUANT_ROWS)
    if least <= 1:
        return [(0, rows)]
    for n in range(least, 4 * least + 1):
        if rows % (n * VEC_ROWS) == 0:
            size = rows // n
            return [(i * size, size) for i in range(n)]
    return [(start, min(DEQUANT_ROWS, rows - start)) for start in range(0, rows, DEQUANT_ROWS)]
