#!/usr/bin/env python3
"""Our dequantisation against llama.cpp's, bit for bit: every quantised tensor of the committed
llama.cpp-quantised files (tests/data/kquant) dequantised by llama.cpp's own libggml-base (the
node-llama-cpp prebuilt, through ctypes) and by `latentserve dequantize-model`.

  python3 ggml_dequant_check.py --latentserve PATH
Exit status: 0 all equal, 1 a tensor differs, 2 could not run."""
import argparse, ctypes, os, struct, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
LIB = os.path.join(HERE, "node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libggml-base.so")
DATA = os.path.join(HERE, "..", "data", "kquant")
# ggml type id -> (values per block, bytes per block, llama.cpp's row dequantiser)
TYPES = {6: (32, 22, "dequantize_row_q5_0"), 7: (32, 24, "dequantize_row_q5_1"), 8: (32, 34, "dequantize_row_q8_0"),
         12: (256, 144, "dequantize_row_q4_K"), 13: (256, 176, "dequantize_row_q5_K"),
         14: (256, 210, "dequantize_row_q6_K")}


def parse(path):
    """(bytes, [(name, ne, type, offset)], data section start) of a GGUF file."""
    b = open(path, "rb").read()
    _, tensor_count, kv_count = struct.unpack_from("<IQQ", b, 4)
    o, align = 24, 32
    scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

    def string(o):
        n = struct.unpack_from("<Q", b, o)[0]
        return b[o + 8:o + 8 + n].decode(), o + 8 + n

    def value(t, o):
        if t == 8:
            return string(o)
        if t == 9:
            et, n = struct.unpack_from("<IQ", b, o)
            o += 12
            for _ in range(n):
                _, o = value(et, o)
            return None, o
        return struct.unpack_from(scalar[t], b, o)[0], o + struct.calcsize(scalar[t])

    for _ in range(kv_count):
        key, o = string(o)
        t = struct.unpack_from("<I", b, o)[0]
        v, o = value(t, o + 4)
        if key == "general.alignment":
            align = v
    tensors = []
    for _ in range(tensor_count):
        name, o = string(o)
        dims = struct.unpack_from("<I", b, o)[0]
        ne = struct.unpack_from("<%dQ" % dims, b, o + 4)
        o += 4 + 8 * dims
        t, offset = struct.unpack_from("<IQ", b, o)
        o += 12
        tensors.append((name, ne, t, offset))
    return b, tensors, (o + align - 1) // align * align


def check(lib, quantised, twin):
    qb, qts, qd = parse(quantised)
    tb, tts, td = parse(twin)
    twin_offsets = {name: offset for name, _, _, offset in tts}
    differing = 0
    for name, ne, t, offset in qts:
        if t not in TYPES:
            continue
        n = 1
        for d in ne:
            n *= d
        per_block, block_bytes, fn = TYPES[t]
        size = n // per_block * block_bytes
        src = ctypes.create_string_buffer(qb[qd + offset:qd + offset + size], size)
        out = (ctypes.c_float * n)()
        getattr(lib, fn)(src, out, ctypes.c_int64(n))
        ours = tb[td + twin_offsets[name]:td + twin_offsets[name] + 4 * n]
        if bytes(out) != ours:
            differing += 1
            print(f"DIFF {os.path.basename(quantised)} {name} (type {t})")
    return differing


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--latentserve", required=True)
    args = parser.parse_args()
    if not os.path.exists(LIB):
        print(f"missing {LIB} (cd tests/reference && npm ci --omit=optional)")
        return 2
    lib = ctypes.CDLL(LIB)
    differing = 0
    with tempfile.TemporaryDirectory() as work:
        for f in sorted(os.listdir(DATA)):
            if not f.endswith(".gguf"):
                continue
            twin = os.path.join(work, f)
            subprocess.run([args.latentserve, "dequantize-model", "--model", os.path.join(DATA, f), "--out", twin],
                           check=True, capture_output=True)
            d = check(lib, os.path.join(DATA, f), twin)
            print(f"{'ok  ' if d == 0 else 'FAIL'} {f}: {d} tensors differ from llama.cpp's dequantisation")
            differing += d
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
