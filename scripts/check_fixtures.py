#!/usr/bin/env python3
"""Independent numpy-only check of the fixtures made by make_fixtures.py (no torch needed).

Usage: python3 scripts/check_fixtures.py crates/s6/tests/fixtures
A float64 numpy Mamba forward is compared with the stored logits, greedy tokens (by repeated full
forwards), loss and gradient key sets, shapes and dtypes. bf16 weights are decoded by hand.
"""
import json, os, glob, math, sys
import numpy as np
from safetensors.numpy import load_file
from safetensors import safe_open
root = sys.argv[1]

def bf16_to_f32(path):
    # numpy can't load bf16 via safetensors.numpy; decode raw bytes
    out = {}
    with open(path,'rb') as f:
        n = int.from_bytes(f.read(8),'little'); hdr = json.loads(f.read(n)); data = f.read()
    for k,v in hdr.items():
        if k == '__metadata__': continue
        a,b = v['data_offsets']; raw = np.frombuffer(data[a:b], dtype=np.uint16)
        assert v['dtype'] in ('BF16','F32'), v['dtype']
        if v['dtype']=='BF16': arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else: arr = np.frombuffer(data[a:b], dtype=np.float32)
        out[k] = arr.reshape(v['shape']).astype(np.float32); out[k+'#dtype'] = v['dtype']
    return out

def load_weights(d):
    files = sorted(glob.glob(f'{d}/model*.safetensors'))
    W = {}; dts=set()
    for f in files:
        w = bf16_to_f32(f)
        for k,v in w.items():
            if k.endswith('#dtype'): dts.add(v)
            else: W[k]=v
    return W, dts, files

def softplus(x): return np.where(x>20, x, np.log1p(np.exp(np.minimum(x,20))))
def silu(x): return x/(1+np.exp(-x))

def forward(cfg, W, ids):
    H=cfg['hidden_size']; I=cfg['intermediate_size']; N=cfg['state_size']; K=cfg['conv_kernel']
    R=cfg['time_step_rank']; R = math.ceil(H/16) if R=='auto' else R
    eps=cfg['layer_norm_epsilon']
    def rms(x,w): x=x.astype(np.float64); return (x/np.sqrt((x*x).mean(-1,keepdims=True)+eps))*w
    E=W['backbone.embeddings.weight'].astype(np.float64)
    x=E[ids]  # B,L,H
    B_,L,_=x.shape
    for l in range(cfg['num_hidden_layers']):
        p=lambda n: W.get(f'backbone.layers.{l}.mixer.{n}')
        h=rms(x, W[f'backbone.layers.{l}.norm.weight'])
        proj=h@p('in_proj.weight').T + (p('in_proj.bias') if cfg['use_bias'] else 0)
        u,z=proj[...,:I],proj[...,I:]
        cw=p('conv1d.weight')[:,0,:]  # I,K
        up=np.concatenate([np.zeros((B_,K-1,I)),u],1)
        c=sum(up[:,k:k+L,:]*cw[:,k] for k in range(K)) + (p('conv1d.bias') if cfg['use_conv_bias'] else 0)
        c=silu(c)
        xp=c@p('x_proj.weight').T
        dt,Bm,Cm=xp[...,:R],xp[...,R:R+N],xp[...,R+N:]
        dt=softplus(dt@p('dt_proj.weight').T+p('dt_proj.bias'))
        A=-np.exp(p('A_log').astype(np.float64))
        s=np.zeros((B_,I,N)); ys=[]
        for t in range(L):
            s=np.exp(dt[:,t,:,None]*A)*s + dt[:,t,:,None]*Bm[:,t,None,:]*c[:,t,:,None]
            ys.append((s*Cm[:,t,None,:]).sum(-1))
        y=np.stack(ys,1)+c*p('D')
        y=y*silu(z)
        out=y@p('out_proj.weight').T + (p('out_proj.bias') if cfg['use_bias'] else 0)
        x=x+out
    h=rms(x,W['backbone.norm_f.weight'])
    lm=W['lm_head.weight'] if not cfg['tie_word_embeddings'] else E
    return h@lm.T

ok=True
for name in ['mamba-odd','mamba-bf16','mamba-rank-auto','mamba-sharded']:
    d=f'{root}/{name}'; cfg=json.load(open(f'{d}/config.json'))
    W,dts,files=load_weights(d)
    e=load_file(f'{d}/expected.safetensors'); V=cfg['vocab_size']
    shapes={k:(str(v.dtype),v.shape) for k,v in e.items()}
    assert shapes=={'input_ids':('int64',(2,37)),'logits':('float32',(2,37,V)),'greedy_prompt':('int64',(2,9)),'greedy':('int64',(2,12))}, shapes
    for k in ['input_ids','greedy_prompt','greedy']: assert e[k].min()>=0 and e[k].max()<V
    ref=forward(cfg,W,e['input_ids'])
    diff=np.abs(ref-e['logits']).max(); rel=diff/np.abs(e['logits']).max()
    # greedy via repeated full forward in numpy
    seq=e['greedy_prompt'].copy()
    for _ in range(12):
        nxt=forward(cfg,W,seq)[:,-1].argmax(-1); seq=np.concatenate([seq,nxt[:,None]],1)
    g_ok=np.array_equal(seq[:,9:],e['greedy'])
    distinct=[len(set(r)) for r in e['greedy'].tolist()]
    size=sum(os.path.getsize(f) for f in glob.glob(d+'/*'))
    line=f'{name}: weights {sorted(dts)} in {len(files)} file(s); dt_rank={cfg["time_step_rank"]!r}; numpy-f64 vs logits max|diff|={diff:.2e} (rel {rel:.1e}); numpy greedy == stored: {g_ok}; distinct/row {distinct}; size {size} B'
    if os.path.exists(f'{d}/expected_grads.safetensors'):
        g=load_file(f'{d}/expected_grads.safetensors')
        assert g['input_ids'].shape==(2,25) and g['input_ids'].dtype==np.int64 and g['loss'].shape==(1,) and g['loss'].dtype==np.float32
        gk={k[5:] for k in g if k.startswith('grad.')}
        expect=set(W)
        assert gk==expect, (gk^expect)
        for k in gk: assert g['grad.'+k].shape==W[k].shape and g['grad.'+k].dtype==np.float32
        # loss check in numpy
        lg=forward(cfg,W,g['input_ids']); ids=g['input_ids']
        lg=lg[:,:-1]; t=ids[:,1:]
        lse=np.log(np.exp(lg-lg.max(-1,keepdims=True)).sum(-1))+lg.max(-1)
        nll=(lse-np.take_along_axis(lg,t[...,None],-1)[...,0]).mean()
        line+=f'; grads {len(gk)} params, loss {g["loss"][0]:.6f} (numpy {nll:.6f})'
        ok &= abs(nll-g['loss'][0])<1e-4
    ok &= bool(g_ok) and rel<1e-4 and size<1_000_000 and min(distinct)>=6
    print(line)
print('ALL OK' if ok else 'PROBLEM')
