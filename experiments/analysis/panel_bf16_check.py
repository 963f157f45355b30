"""panel_bf16_check.py — a numpy check of the GPU analysis's panel iteration on a
BF16 tensor (cuda/analysis.cu, stage_iter: V and Y rounded to BF16 before each
product, fp32/fp64 sums, the centring on the same rounded panels), against the
same iteration unrounded and the exact SVD, on shapes like the device test's
(tests/cuda/test_analysis_gpu.cu). 16 products, QR after each, Rayleigh–Ritz
in fp64. Prints |Δσ₁|/σ₁, |Δcos(μ, v₁)| and |Δ spike share| of both iterations
against the SVD: the BF16 rounding should add nothing visible beside the
iteration's own convergence error. Run: python3 experiments/analysis/panel_bf16_check.py
"""
import numpy as np
def bf16(a):
    a=np.asarray(a,dtype=np.float32); b=a.view(np.uint32).astype(np.uint64)
    r=((b+0x7fff+((b>>16)&1))>>16)<<16
    return r.astype(np.uint32).view(np.float32)
def run(X, p1=16, k=None, iters=16, mode='bf16'):
    """σ₁, cos(μ, v₁), spike share by the GPU's panel iteration (mode 'bf16': rounded panels)"""
    l,m=X.shape; g=min(l,m); k=k or int(np.ceil(0.01*g)); p1=min(p1,g); p2=min(k+8,g)  # as blocks_for
    mu=X.mean(0); Xc=X-mu
    rng=np.random.default_rng(0)
    V=[rng.random((m,p))-0.5 for p in (p1,p2)]
    Xb = bf16(X).astype(np.float64) if mode=='bf16' else X.astype(np.float64)
    for it in range(iters):
        for b in range(2):
            v=V[b]
            if mode=='bf16': v=bf16(v).astype(np.float64)
            y=Xb@v
            if b==1: y-= np.outer(np.ones(l), mu@v)
            if mode=='bf16': y=bf16(y).astype(np.float64)
            z=Xb.T@y
            if b==1: z-= np.outer(mu, np.ones(l)@y)
            q,_=np.linalg.qr(z); V[b]=q
    out={}
    # RR exact fp64
    for b,A in ((0,X.astype(np.float64)),(1,Xc.astype(np.float64))):
        q,_=np.linalg.qr(V[b]); Y=A@q; B=Y.T@Y; w,U=np.linalg.eigh(B)
        out[b]=(w[::-1],q@U[:,::-1])
    s1=np.sqrt(out[0][0][0]); v1=out[0][1][:,0]
    cos=abs(mu@v1)/np.linalg.norm(mu)
    spike=out[1][0][:k].sum()/ (X.astype(np.float64)**2).sum()
    return s1,cos,spike
def exact(X):
    """the same from the SVD, and σ₂/σ₁"""
    l,m=X.shape; k=int(np.ceil(0.01*min(l,m))); mu=X.mean(0); Xc=(X-mu).astype(np.float64)
    U,S,Vt=np.linalg.svd(X.astype(np.float64),full_matrices=False)
    Sc=np.linalg.svd(Xc,compute_uv=False)
    cos=abs(mu@Vt[0])/np.linalg.norm(mu)
    return S[0],cos,(Sc[:k]**2).sum()/(X.astype(np.float64)**2).sum(), S[1]/S[0]
rng=np.random.default_rng(1)
def synth(l,m,bias,spikes,scale):
    mu=rng.normal(size=m); X=bias*mu+rng.normal(size=(l,m)); X[:,:spikes]*=scale; return bf16(X.astype(np.float32))
def dlogits(l,m):
    z=np.exp(2*rng.normal(size=(l,m))-0.002*np.arange(m)); p=z/z.sum(1,keepdims=True)
    t=rng.integers(0,m,l); p[np.arange(l),t]-=1; return bf16((p/l).astype(np.float32))
# the device test's synthetic kinds (BF16 values), and an unconverged Gaussian
for name,X in (("ties 1024x256",synth(1024,256,1.5,3,8)),("mean+spikes 2048x768",synth(2048,768,1.0,4,20)),("dlogits 1024x2048",dlogits(1024,2048)),("gauss 2048x1024",synth(2048,1024,0.0,0,1))):
    e=exact(X)
    for mode in ('fp32','bf16'):
        r=run(X,mode=mode)
        print(f"{name:22s} {mode}: s1 rel {abs(r[0]-e[0])/e[0]:.2e} cos {abs(r[1]-e[1]):.2e} spike {abs(r[2]-e[2]):.2e}  (s2/s1 {e[3]:.3f})")
