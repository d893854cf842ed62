"""squish's CUDA kernels run on the CPU (emu.h) against numpy references, with the launch
shapes and split arithmetic of the Rust host code: a check of their indexing and arithmetic
that needs no GPU. The GPU tests (crates/*/tests/cuda*) remain the judge on real hardware.

    python3 tests/cuda-emulation/check.py        (needs g++ and numpy; about a minute)
"""
import ctypes
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join(HERE, "..", "..", "crates", "squish-backend", "src", "cuda")
P = ctypes.c_void_p


def build(name, define):
    out = os.path.join(tempfile.gettempdir(), f"squish-emu-{name}.so")
    src = os.path.join(KERNELS, f"{name}.cu")
    subprocess.run(["g++", "-O2", "-fno-strict-aliasing", "-std=c++17", "-shared", "-fPIC", "-w", f"-D{define}", f'-DKERNEL_FILE="{src}"',
                    "-I", os.path.join(HERE, "include"), os.path.join(HERE, "kernels.cpp"), "-o", out], check=True)
    return ctypes.CDLL(out)


def bf16(x):
    """f32 values -> bf16 bits (round to nearest even), as __float2bfloat16."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def ptr(a):
    return a.ctypes.data_as(P)


def close(label, got, want):
    """Each row within 1% of its largest |value|."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = np.maximum(np.abs(want).max(axis=-1, keepdims=True), 1e-3)
    worst = (np.abs(got - want) / scale).max()
    assert worst <= 0.01, f"{label}: worst |diff| {worst:.3g} of a row's largest |value|"
    return worst


rng = np.random.default_rng(7)


def values(shape, amplitude=1.0):
    return f32(bf16(rng.uniform(-amplitude / 2, amplitude / 2, shape)))


# ---- decode attention (attention.cu, host code in attention.rs) ----
MAX_SEQS, TARGET_BLOCKS, MIN_SPAN = 32, 264, 32


def split(pairs, keys):
    want = max(1, min(-(-TARGET_BLOCKS // max(pairs, 1)), keys // MIN_SPAN))
    span = max(1, -(-keys // want))
    return -(-keys // span), span


class Caches(ctypes.Structure):
    _fields_ = [("k", ctypes.c_uint64 * MAX_SEQS), ("v", ctypes.c_uint64 * MAX_SEQS), ("pos", ctypes.c_int * MAX_SEQS)]


def joint_bias(with_bias, heads, kv_heads, d):
    """A q|k|v bias (bf16 values) and its bits, or (zeros, None): the kernels add it."""
    n = (heads + 2 * kv_heads) * d
    if not with_bias:
        return np.zeros(n, np.float32), None
    b = values(n, 2.0)
    return b, bf16(b)


def check_attention(lib, heads, kv_heads, d, positions, stacked, with_bias=False):
    rows, group, half = len(positions), heads // kv_heads, d // 2
    bias, bias_bits = joint_bias(with_bias, heads, kv_heads, d)
    cap = max(positions) + 2
    inv = 1.0 / 10000 ** (2 * np.arange(half) / d)
    ang = np.arange(cap)[:, None] * inv[None, :]
    cos, sin = bf16(np.cos(ang)), bf16(np.sin(ang))
    q, kn, vn = values((rows, heads * d), 8.0), values((rows, kv_heads * d)), values((rows, kv_heads * d))
    if stacked:
        joint = bf16(np.concatenate([q, kn, vn], axis=1))
        qb, kb, vb = joint, joint[:, heads * d:], joint[:, heads * d + kv_heads * d:]
        stride = joint.shape[1]
        qst = kst = vst = stride
        addr = lambda a: a.__array_interface__["data"][0]  # a view's first element
    else:
        qb, kb, vb = bf16(q), bf16(kn), bf16(vn)
        qst, kst, vst = heads * d, kv_heads * d, kv_heads * d
        addr = lambda a: a.ctypes.data
    caches = [(bf16(values((kv_heads, cap, d))), bf16(values((kv_heads, cap, d)))) for _ in range(rows)]
    before = [(k.copy(), v.copy()) for k, v in caches]
    out = np.zeros((rows, heads * d), np.uint16)
    for c0 in range(0, rows, MAX_SEQS):
        chunk = list(range(c0, min(rows, c0 + MAX_SEQS)))
        table = Caches()
        for i, s in enumerate(chunk):
            table.k[i], table.v[i], table.pos[i] = caches[s][0].ctypes.data, caches[s][1].ctypes.data, positions[s]
        splits, span = split(len(chunk) * kv_heads, max(positions[s] for s in chunk) + 1)
        part = np.zeros(len(chunk) * heads * splits * (d + 2) if splits > 1 else 1, np.float32)
        lib.emu_decode_attention(P(addr(qb)), P(addr(kb)), P(addr(vb)), None if bias_bits is None else ptr(bias_bits), ptr(cos), ptr(sin),
                                 ptr(out), ptr(part), ctypes.byref(table),
                                 len(chunk), c0, qst, kst, vst, heads, kv_heads, d, cap, ctypes.c_float(1 / np.sqrt(d)), splits, span)
    got = f32(out)
    # What the kernel attends with: each row plus its bias, rounded to bf16.
    plus = lambda x, b: f32(bf16(x.astype(np.float32) + b.astype(np.float32)))
    q, kn, vn = plus(q, bias[:heads * d]), plus(kn, bias[heads * d:(heads + kv_heads) * d]), plus(vn, bias[(heads + kv_heads) * d:])
    worst = 0.0
    for s, pos in enumerate(positions):
        kc, vc = f32(caches[s][0]), f32(caches[s][1])
        c, sn = f32(cos[pos]).astype(np.float64), f32(sin[pos]).astype(np.float64)
        rot = lambda x: np.concatenate([x[:half] * c - x[half:] * sn, x[:half] * sn + x[half:] * c])
        for h in range(kv_heads):
            keep = np.arange(cap) != pos
            assert (caches[s][0][h][keep] == before[s][0][h][keep]).all() and (caches[s][1][h][keep] == before[s][1][h][keep]).all(), \
                f"{heads}/{kv_heads} {positions}: seq {s} kv head {h}: a cache position other than {pos} changed"
            want_k = rot(kn[s, h * d:(h + 1) * d].astype(np.float64))
            assert np.allclose(kc[h, pos], want_k, rtol=1e-2, atol=1e-6), f"seq {s} kv head {h}: stored key"
            assert (vc[h, pos] == vn[s, h * d:(h + 1) * d]).all(), f"seq {s} kv head {h}: stored value"
            for g in range(group):
                hq = h * group + g
                qr = f32(bf16(rot(q[s, hq * d:(hq + 1) * d].astype(np.float64))))
                scores = kc[h, :pos + 1].astype(np.float64) @ qr / np.sqrt(d)
                p = np.exp(scores - scores.max())
                want = (p[:, None] * vc[h, :pos + 1]).sum(0) / p.sum()
                worst = max(worst, close(f"attention {heads}/{kv_heads} d{d} {positions} stacked={stacked} seq {s} head {hq}",
                                         got[s, hq * d:(hq + 1) * d][None], want[None]))
    return worst


# ---- prompt attention (prefill.cu, host code in prefill.rs) ----
def check_prefill(lib, heads, kv_heads, d, start, t, stacked, with_bias=False):
    group, half = heads // kv_heads, d // 2
    bias, bias_bits = joint_bias(with_bias, heads, kv_heads, d)
    cap = start + t + 3
    inv = 1.0 / 10000 ** (2 * np.arange(half) / d)
    ang = np.arange(cap)[:, None] * inv[None, :]
    cos, sin = bf16(np.cos(ang)), bf16(np.sin(ang))
    q, kn, vn = values((t, heads * d), 8.0), values((t, kv_heads * d)), values((t, kv_heads * d))
    if stacked:
        joint = bf16(np.concatenate([q, kn, vn], axis=1))
        qb, kb, vb = joint, joint[:, heads * d:], joint[:, heads * d + kv_heads * d:]
        qst = kst = vst = joint.shape[1]
        addr = lambda a: a.__array_interface__["data"][0]
    else:
        qb, kb, vb = bf16(q), bf16(kn), bf16(vn)
        qst, kst, vst = heads * d, kv_heads * d, kv_heads * d
        addr = lambda a: a.ctypes.data
    kc, vc = bf16(values((kv_heads, cap, d))), bf16(values((kv_heads, cap, d)))
    kc0, vc0 = kc.copy(), vc.copy()
    out = np.zeros((t, heads * d), np.uint16)
    lib.emu_prefill_attention(P(addr(qb)), P(addr(kb)), P(addr(vb)), None if bias_bits is None else ptr(bias_bits), ptr(cos), ptr(sin),
                              ptr(kc), ptr(vc), ptr(out), qst, kst, vst, heads, kv_heads, d, cap, start, t)
    plus = lambda x, b: f32(bf16(x.astype(np.float32) + b.astype(np.float32)))
    q, kn, vn = plus(q, bias[:heads * d]), plus(kn, bias[heads * d:(heads + kv_heads) * d]), plus(vn, bias[(heads + kv_heads) * d:])
    label = f"prefill {heads}/{kv_heads} d{d} start {start} t {t} stacked={stacked}"
    new = slice(start, start + t)
    keep = np.ones(cap, bool)
    keep[new] = False
    assert (kc[:, keep] == kc0[:, keep]).all() and (vc[:, keep] == vc0[:, keep]).all(), f"{label}: a cache position outside the prompt changed"
    assert (vc[:, new] == bf16(vn).reshape(t, kv_heads, d).transpose(1, 0, 2)).all(), f"{label}: stored values"
    c, sn = f32(cos[new]).astype(np.float64), f32(sin[new]).astype(np.float64)  # (t, half)
    rot = lambda x: np.concatenate([x[..., :half] * c - x[..., half:] * sn, x[..., :half] * sn + x[..., half:] * c], -1)
    kf, vf = f32(kc).astype(np.float64), f32(vc).astype(np.float64)
    want_k = rot(kn.reshape(t, kv_heads, d).transpose(1, 0, 2).astype(np.float64))
    assert np.allclose(kf[:, new], want_k, rtol=1e-2, atol=1e-6), f"{label}: stored keys"
    got = f32(out).reshape(t, heads, d)
    worst = 0.0
    visible = np.arange(cap)[None, :] <= (start + np.arange(t))[:, None]  # (t, cap)
    for hq in range(heads):
        h = hq // group
        qr = f32(bf16(rot(q[:, hq * d:(hq + 1) * d].astype(np.float64))))
        scores = np.where(visible, qr @ kf[h].T / np.sqrt(d), -np.inf)
        p = np.exp(scores - scores.max(1, keepdims=True))
        want = p @ vf[h] / p.sum(1, keepdims=True)
        worst = max(worst, close(f"{label} head {hq}", got[:, hq], want))
    return worst


# ---- fused.cu ----
def check_fused(lib):
    worst = 0.0
    for t, width in [(1, 4864), (3, 1536), (9, 96)]:
        joint = values((t, 2 * width), 8.0)
        jb = bf16(joint)
        out = np.zeros((t, width), np.uint16)
        lib.emu_silu_mul(ptr(jb), P(jb.ctypes.data + 2 * width), ptr(out), t, width, 2 * width, 2 * width)
        g, u = joint[:, :width].astype(np.float64), joint[:, width:].astype(np.float64)
        worst = max(worst, close(f"silu_mul {t}x{width}", f32(out), g / (1 + np.exp(-g)) * u))
    for t, width in [(1, 3584), (5, 576), (2, 100)]:
        x, y, w = values((t, width), 4.0), values((t, width)), f32(bf16(rng.uniform(0.5, 1.5, width)))
        out = np.zeros((2, t, width), np.uint16)
        lib.emu_add_rms_norm(ptr(bf16(x)), ptr(bf16(y)), ptr(bf16(w)), ptr(out), t, width, ctypes.c_float(1e-6))
        s = f32(bf16(x + y))
        assert (f32(out[0]) == s).all(), f"add_rms_norm {t}x{width}: the residual sum"
        s64 = s.astype(np.float64)
        want = s64 / np.sqrt((s64 ** 2).mean(-1, keepdims=True) + 1e-6) * w
        worst = max(worst, close(f"add_rms_norm {t}x{width}", f32(out[1]), want))
    return worst


# ---- quant.cu: the GEMVs and INT4's tensor-core kernel ----
def int4_matrix(n, k, g):
    w = rng.normal(0, 1, (n, k))
    q = np.zeros((n, k), np.uint8)
    params = np.zeros((n, k // g, 2), np.float16)
    for j in range(k // g):
        blk = w[:, j * g:(j + 1) * g]
        lo, hi = blk.min(1), blk.max(1)
        scale = np.maximum((hi - lo) / 15, 1e-8).astype(np.float16)
        mn = lo.astype(np.float16)
        params[:, j, 0], params[:, j, 1] = scale, mn
        q[:, j * g:(j + 1) * g] = np.clip(np.round((blk - mn.astype(np.float64)[:, None]) / scale.astype(np.float64)[:, None]), 0, 15)
    # 64-input blocks of 32 bytes: byte j holds input j (low nibble) and 32 + j (high).
    blocks = q.reshape(n, k // 64, 2, 32)
    codes = (blocks[:, :, 0, :] | (blocks[:, :, 1, :] << 4)).astype(np.uint8).reshape(n, k // 2)
    s = params[:, :, 0].astype(np.float32).repeat(g, 1)
    m = params[:, :, 1].astype(np.float32).repeat(g, 1)
    return np.ascontiguousarray(codes), np.ascontiguousarray(params), s * q.astype(np.float32) + m


def check_quant(lib):
    worst = 0.0
    for n, k, g in [(200, 576, 32), (37, 1536, 64)]:
        w = rng.normal(0, 1, (n, k))
        scales = (np.abs(w).reshape(n, k // g, g).max(-1) / 127).astype(np.float16)
        s = scales.astype(np.float64).repeat(g, 1)
        codes = np.clip(np.round(w / s), -127, 127).astype(np.int8)
        w8 = (s * codes).astype(np.float32)
        # The GEMV up to 8 rows, then the tensor-core kernel (bf16-rounded weights), split too.
        for t, splits in [(1, 1), (8, 1), (9, 1), (64, 1), (24, 3)]:
            x = values((t, k))
            y = np.zeros((t, n), np.uint16)
            if t <= 8:
                lib.emu_int8_gemv(ptr(codes), ptr(scales), ptr(bf16(x)), ptr(y), n, k, g, t)
            else:
                lib.emu_mma(8, P(codes.ctypes.data), ptr(scales), ptr(bf16(x)), ptr(y), n, k, g, t, min(splits, k // 64))
            wr = w8 if t <= 8 else f32(bf16(w8))
            worst = max(worst, close(f"int8 {'gemv' if t <= 8 else 'mma'} {n}x{k} g{g} t{t}", f32(y), x.astype(np.float64) @ wr.T.astype(np.float64)))
    for n, k, g in [(200, 576, 64), (96, 1536, 32), (37, 64, 64)]:
        codes, params, w = int4_matrix(n, k, g)
        # (rows, input stretches): the GEMV for up to 8 rows, the tensor-core kernel above,
        # its inputs split in stretches (uneven ones too: 9 or 24 steps in 2, 5 or 7).
        for t, splits in [(1, 1), (8, 1), (9, 1), (40, 1), (64, 1), (16, 2), (33, 5), (12, 7)]:
            steps = k // 64
            splits = min(splits, steps)
            x = values((t, k))
            xb = bf16(x)
            y = np.zeros((t, n), np.uint16)
            if t <= 8:
                lib.emu_int4_gemv(ptr(codes), ptr(params), ptr(xb), ptr(y), n, k, g, t)
            else:
                lib.emu_mma(4, ptr(codes), ptr(params), ptr(xb), ptr(y), n, k, g, t, splits)
            # The tensor-core kernel multiplies bf16-rounded weights, as dequantize + cuBLAS did.
            wr = w if t <= 8 else f32(bf16(w))
            label = f"int4 {'gemv' if t <= 8 else f'mma ({splits} stretches)'} {n}x{k} g{g} t{t}"
            worst = max(worst, close(label, f32(y), x.astype(np.float64) @ wr.T.astype(np.float64)))
    return worst


# ---- lowbit.cu: INT3 and INT2, and the input rotation (host code in quant.rs) ----
def grouped_params(w, g, qmax):
    """Per-group f16 scale and min for codes 0..=qmax, interleaved as the host uploads them."""
    n, k = w.shape
    lo, hi = w.reshape(n, k // g, g).min(-1), w.reshape(n, k // g, g).max(-1)
    params = np.zeros((n, k // g, 2), np.float16)
    params[:, :, 0] = np.maximum((hi - lo) / qmax, 1e-8)
    params[:, :, 1] = lo
    return params


def pack_int3(q):
    """squish_quant::int3's layout (its module doc): per 64-input block, 16 bytes of low bit
    pairs (byte j: inputs j, 16+j, 32+j, 48+j) and 8 bytes of high bits (bit i of byte 16+j:
    input 8i+j)."""
    n, k = q.shape
    b = q.reshape(n, k // 64, 64).astype(np.uint8)
    lo = (b[:, :, 0:16] & 3) | (b[:, :, 16:32] & 3) << 2 | (b[:, :, 32:48] & 3) << 4 | (b[:, :, 48:64] & 3) << 6
    hi = np.zeros((n, k // 64, 8), np.uint8)
    for i in range(8):
        hi |= ((b[:, :, 8 * i:8 * i + 8] >> 2) & 1) << i
    return np.concatenate([lo, hi], -1).reshape(n, k // 64 * 24)


def pack_int2(entries):
    """squish_quant::int2's layout: per block, byte p holds the entry of inputs (2p, 2p+1) low
    and of (32+2p, 33+2p) high. `entries`: one per input pair, (n, k/2)."""
    n, half = entries.shape
    e = entries.reshape(n, half // 32, 32).astype(np.uint8)
    return (e[:, :, 0:16] | e[:, :, 16:32] << 4).reshape(n, half // 32 * 16)


def check_lowbit(lib):
    worst = 0.0
    for bits, n, k, g in [(3, 37, 576, 64), (3, 200, 1536, 32), (2, 37, 576, 64), (2, 96, 1536, 32)]:
        if bits == 3:
            q = rng.integers(0, 8, (n, k))
            codes = pack_int3(q)
            qmax = 7
        else:
            table = rng.integers(0, 128, 32).astype(np.uint8)
            entries = rng.integers(0, 16, (n, k // 2))
            q = np.stack([table[entries], table[16 + entries]], -1).reshape(n, k)  # even input, odd input
            codes = np.concatenate([pack_int2(entries).reshape(-1), table])
            qmax = 127
        params = grouped_params(rng.normal(0, 1, (n, k)), g, qmax)
        s = params[:, :, 0].astype(np.float32).repeat(g, 1)
        m = params[:, :, 1].astype(np.float32).repeat(g, 1)
        w = s * q.astype(np.float32) + m
        codes, params = np.ascontiguousarray(codes, np.uint8), np.ascontiguousarray(params)
        # The GEMV up to 8 rows, then the tensor-core kernel (bf16-rounded weights), split too.
        for t, splits in [(1, 1), (5, 1), (8, 1), (9, 1), (40, 1), (64, 1), (17, 4)]:
            x = values((t, k))
            y = np.zeros((t, n), np.uint16)
            if t <= 8:
                lib.emu_lowbit_gemv(bits, ptr(codes), ptr(params), ptr(bf16(x)), ptr(y), n, k, g, t)
            else:
                lib.emu_lowbit_mma(bits, ptr(codes), ptr(params), ptr(bf16(x)), ptr(y), n, k, g, t, min(splits, k // 64))
            wr = w if t <= 8 else f32(bf16(w))
            label = f"int{bits} {'gemv' if t <= 8 else 'mma'} {n}x{k} g{g} t{t}"
            worst = max(worst, close(label, f32(y), x.astype(np.float64) @ wr.T.astype(np.float64)))
        dq = np.zeros((n, k), np.uint16)
        lib.emu_lowbit_dequant(bits, ptr(codes), ptr(params), ptr(dq), n, k, g)
        assert (dq == bf16(w)).all(), f"int{bits} dequantize {n}x{k} g{g}: not the bf16-rounded weights"
    for t, k, hb in [(3, 576, 64), (2, 1536, 512), (1, 256, 128)]:
        x = values((t, k), 4.0)
        signs = rng.choice([-1.0, 1.0], k).astype(np.float32)
        h = np.ones((1, 1))
        while h.shape[0] < hb:
            h = np.block([[h, h], [h, -h]])
        want = ((x * signs).reshape(t, k // hb, hb) @ h.T).reshape(t, k) / np.sqrt(hb)
        out = np.zeros((t, k), np.uint16)
        lib.emu_rotate(ptr(bf16(x)), ptr(signs), ptr(out), t, k, hb, ctypes.c_float(1 / np.sqrt(hb)))
        worst = max(worst, close(f"rotate {t}x{k} block {hb}", f32(out), want))
    return worst


def main():
    att = build("attention", "EMU_ATTENTION")
    worst = 0.0
    for pos in [0, 1, 37, 64, 300]:
        worst = max(worst, check_attention(att, 28, 4, 128, [pos], False))
    worst = max(worst, check_attention(att, 28, 4, 128, [200], True))
    worst = max(worst, check_attention(att, 28, 4, 128, [0, 5, 300, 150], False))
    worst = max(worst, check_attention(att, 28, 4, 128, [0, 77, 300], True, with_bias=True))  # Qwen2's q/k/v bias
    worst = max(worst, check_attention(att, 9, 3, 64, [3, 140, 77], True))
    worst = max(worst, check_attention(att, 8, 2, 64, [(i * 37) % 100 for i in range(40)], False))
    print(f"attention: ok (worst {worst:.2e} of a head's largest |value|)")
    pre = build("prefill", "EMU_PREFILL")
    worst = 0.0
    # One block of queries and several, a chunk after a cached prefix, SmolLM2's and
    # Qwen2.5-7B's head shapes (7 query heads per kv head), stacked q/k/v.
    for heads, kv_heads, d, start, t, stacked in [(4, 2, 64, 0, 1, False), (4, 2, 64, 0, 70, False), (4, 1, 128, 37, 130, False),
                                                   (9, 3, 64, 100, 33, True), (14, 2, 128, 0, 64, True), (2, 2, 32, 5, 17, False)]:
        worst = max(worst, check_prefill(pre, heads, kv_heads, d, start, t, stacked))
    worst = max(worst, check_prefill(pre, 14, 2, 128, 20, 70, True, with_bias=True))  # Qwen2's q/k/v bias
    print(f"prefill attention: ok (worst {worst:.2e} of a row's largest |value|)")
    print(f"fused: ok (worst {check_fused(build('fused', 'EMU_FUSED')):.2e})")
    print(f"int3 and int2 gemv, mma and dequantization, input rotation: ok (worst {check_lowbit(build('lowbit', 'EMU_LOWBIT')):.2e})")
    print(f"int8 and int4 gemv and mma: ok (worst {check_quant(build('quant', 'EMU_QUANT')):.2e})")


if __name__ == "__main__":
    sys.exit(main())
