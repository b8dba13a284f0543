# Per-kernel GPU time of the last decode step in an ncu CSV (ncu --metrics gpu__time_duration.sum --csv):
# the step starts at the second-to-last GetRowsKernel (its embedding; the head uses the last).
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1])))
hdr = None
data = []
for r in rows:
    if hdr is None and 'Kernel Name' in r: hdr = r; continue
    if hdr and len(r) == len(hdr): data.append(dict(zip(hdr, r)))
names = [d['Kernel Name'] for d in data]
last = max(i for i, n in enumerate(names) if n.startswith('GetRowsKernel') or 'GetRowsKernel' in n[:40])
# the decode step begins at the second-to-last GetRows (embedding) since the head also uses GetRows
gets = [i for i, n in enumerate(names) if 'GetRowsKernel' in n[:60]]
start = gets[-2]
step = data[start:]
agg = collections.defaultdict(lambda: [0, 0.0])
total = 0.0
for d in step:
    v = float(d['Metric Value'].replace(',', ''))
    unit = d.get('Metric Unit', 'nsecond')
    ns = v * {'nsecond': 1, 'usecond': 1e3, 'msecond': 1e6}.get(unit, 1)
    k = d['Kernel Name'][:90]
    if 'QuantMma' in k:  # the tensor-core products: dense (grid z 1) and grouped experts apart, by shape
        k = k[:90] + ' grid ' + d.get('Grid Size', '?')
    agg[k][0] += 1; agg[k][1] += ns; total += ns
print(f"decode step: {len(step)} kernels, {total/1e3:.1f} us of kernel time")
for k, (c, ns) in sorted(agg.items(), key=lambda x: -x[1][1])[:45]:
    print(f"{ns/1e3:9.1f} us {c:5d}x  {k}")
