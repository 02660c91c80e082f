# Where a batch-1 decode step's time goes on this GPU: CUDA graphs of TinyLlama-shaped GEMVs alone,
# with fused qkv/gate-up weights, and with small element-wise kernels added per layer.
import torch, torch.nn.functional as F
torch.manual_seed(0)
dt = torch.bfloat16; dev = "cuda"
Ly, H, I, KV, V = 22, 2048, 5632, 256, 32000
R = lambda *s: torch.randn(*s, dtype=dt, device=dev) * 0.02
W = [dict(q=R(H, H), k=R(KV, H), v=R(KV, H), o=R(H, H), g=R(I, H), u=R(I, H), d=R(H, I)) for _ in range(Ly)]
for w in W: w["qkv"] = torch.cat([w["q"], w["k"], w["v"]]); w["gu"] = torch.cat([w["g"], w["u"]])
head = R(V, H); x = R(1, H)
def plain(extra):
    h = x
    for w in W:
        q, k, v = F.linear(h, w["q"]), F.linear(h, w["k"]), F.linear(h, w["v"])
        for _ in range(extra): q = q * 1.0001
        h = h + F.linear(q, w["o"])
        h = h + F.linear(F.linear(h, w["g"]) * F.linear(h, w["u"]), w["d"])
    return F.linear(h, head)
def fused(extra):
    h = x
    for w in W:
        qkv = F.linear(h, w["qkv"]); q = qkv[:, :H]
        for _ in range(extra): q = q * 1.0001
        h = h + F.linear(q, w["o"])
        gu = F.linear(h, w["gu"])
        h = h + F.linear(gu[:, :I] * gu[:, I:], w["d"])
    return F.linear(h, head)
def timed(f):
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s): f(); f()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g): f()
    for _ in range(10): g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(True), torch.cuda.Event(True)
    a.record()
    for _ in range(200): g.replay()
    b.record(); torch.cuda.synchronize()
    return a.elapsed_time(b) / 200
wb = sum(t.numel() * 2 for w in W for kk, t in w.items() if kk in ("q", "k", "v", "o", "g", "u", "d")) + head.numel() * 2
print(f"weights {wb/1e9:.2f} GB")
for name, f in [("plain", plain), ("fused-qkv-gateup", fused)]:
    for extra in [0, 10, 20]:
        ms = timed(lambda: f(extra))
        print(f"{name:18} +{extra:2} small kernels/layer: {ms*1000:7.0f} us/step  {1000/ms:6.0f} tok/s  {wb/ms/1e6:6.0f} GB/s")
