"""Python simulation of s6_scan_bwd_n16v_body (crates/s6/src/backend/cuda/kernels/scan_backward.cu),
thread by thread and phase by phase between its barriers, in float64 with exact exp2, followed by
the two reduction kernels; the gradients are checked against central finite differences of a
float64 forward. It catches indexing and logic errors of the kernel as transcribed here (written
without a GPU in session 10), not rounding, races or alignment. Mutating an index (the checkpoint
read, the dB/dC partials' offset) makes it fail.

Run: python3 scripts/sim_scan_bwd_n16v.py   (needs numpy; ~4 s)"""
import numpy as np, math, sys

def softplus(x): return x if x > 20 else math.log1p(math.exp(x))
def sigmoid(x): return 1.0 / (1.0 + math.exp(-x))

def kernel(T, u, delta, dbias, a, bm, ldb, cm, ldc, dskip, z, ldz, dy, seqlen, dim, batch):
    NT, SPLIT, NPT, CPB, N = 64, 4, 4, 16, 16
    FT = 4 * T; EF = FT * CPB // NT; E = (T * CPB + NT - 1) // NT
    rows = batch * seqlen
    nblk = (dim + CPB - 1) // CPB
    nck = (seqlen + T - 1) // T
    du = np.zeros(rows * dim); ddelta = np.zeros(rows * dim); dz = np.zeros(rows * dim) if z is not None else None
    ckpt = np.full(batch * dim * nck * N, np.nan)
    pbc = np.full(nblk * rows * 2 * N, np.nan)
    pparam = np.full(batch * dim * (N + 2), np.nan)
    for by in range(batch):
        for bx in range(nblk):
            b = by; d0 = bx * CPB; row0 = b * seqlen
            # per-thread registers
            R = [dict() for _ in range(NT)]
            for tid in range(NT):
                r = R[tid]
                ch, part = tid // SPLIT, tid % SPLIT
                d = d0 + ch; active = d < dim
                r.update(ch=ch, part=part, d=d, active=active, ck0=(b * dim + d) * nck)
                rc = tid % CPB; rd = d0 + rc
                r.update(rc=rc, rd=rd, rdsk=dskip[rd] if rd < dim else 0.0, rbias=dbias[rd] if rd < dim else 0.0)
                r['av'] = [a[d * N + part * NPT + i] if active else 0.0 for i in range(NPT)]
                r['a2'] = [v * 1.4426950408889634 for v in r['av']]
                r['h'] = [0.0] * NPT; r['dh'] = [0.0] * NPT; r['da'] = [0.0] * NPT
                r['ru'] = [0.0]*E; r['rdl'] = [0.0]*E; r['rz'] = [0.0]*E; r['rg'] = [0.0]*E; r['rb'] = [0.0]*E; r['rcc'] = [0.0]*E; r['rck'] = [0.0]*NPT
            def load(tid, k, full):
                r = R[tid]; t0 = k * T; tl = min(seqlen - t0, T)
                for e in range(E):
                    idx = tid + e * NT; t, c = idx // CPB, idx % CPB; dd = d0 + c; rr = row0 + t0 + t
                    inn = idx < T * CPB and t < tl; okc = inn and dd < dim
                    r['ru'][e] = u[rr * dim + dd] if okc else 0.0
                    r['rdl'][e] = delta[rr * dim + dd] if okc else 0.0
                    r['rb'][e] = bm[rr * ldb + c] if inn else 0.0
                    if full:
                        r['rg'][e] = dy[rr * dim + dd] if okc else 0.0
                        r['rz'][e] = z[rr * ldz + dd] if (okc and z is not None) else 0.0
                        r['rcc'][e] = cm[rr * ldc + c] if inn else 0.0
                if full and k + 1 < nck:
                    for i in range(NPT):
                        r['rck'][i] = ckpt[(r['ck0'] + k) * N + r['part'] * NPT + i] if r['active'] else 0.0
            for tid in range(NT): load(tid, nck - 1, True)
            # 1. forward
            shd = np.zeros(T * NT * 8)  # s_hd region as floats: [T][NT][2][4]
            nf = (nck - 1) * T
            def loadf(tid, f0):
                r = R[tid]; r['fu'] = [0.0]*EF; r['fd'] = [0.0]*EF; r['fb'] = [0.0]*EF
                for e in range(EF):
                    idx = tid + e * NT; t, c = idx // CPB, idx % CPB; dd = d0 + c; rr = row0 + f0 + t
                    inn = f0 + t < nf
                    r['fu'][e] = u[rr * dim + dd] if (inn and dd < dim) else 0.0
                    r['fd'][e] = delta[rr * dim + dd] if (inn and dd < dim) else 0.0
                    r['fb'][e] = bm[rr * ldb + c] if inn else 0.0
            if nf > 0:
                for tid in range(NT): loadf(tid, 0)
            f_u = 0; f_dt = FT * CPB; f_b = 2 * FT * CPB
            f0 = 0
            while f0 < nf:
                nk = min(nf - f0, FT) // T
                for tid in range(NT):
                    r = R[tid]
                    for e in range(EF):
                        idx = tid + e * NT
                        shd[f_u + idx] = r['fu'][e]
                        shd[f_dt + idx] = softplus(r['fd'][e] + r['rbias']) if d0 + (idx % CPB) < dim else 0.0
                        shd[f_b + idx] = r['fb'][e]
                for tid in range(NT):
                    r = R[tid]
                    if f0 + FT < nf: loadf(tid, f0 + FT)
                    for kk in range(nk):
                        k = f0 // T + kk
                        if r['active']:
                            for i in range(NPT): ckpt[(r['ck0'] + k) * N + r['part'] * NPT + i] = r['h'][i]
                        for tt in range(T):
                            t = kk * T + tt
                            dt = shd[f_dt + t * CPB + r['ch']]; dx = dt * shd[f_u + t * CPB + r['ch']]
                            bb = [shd[f_b + t * N + r['part'] * 4 + i] for i in range(4)]
                            for i in range(4): r['h'][i] = 2.0 ** (dt * r['a2'][i]) * r['h'][i] + dx * bb[i]
                f0 += FT
            # 2. reverse
            for tid in range(NT): R[tid]['dd_acc'] = 0.0; R[tid]['dbias_acc'] = 0.0
            s_u = np.zeros((T, CPB)); s_dt = np.zeros((T, CPB)); s_sp = np.zeros((T, CPB)); s_g = np.zeros((T, CPB)); s_gz = np.zeros((T, CPB))
            s_b = np.zeros((T, N)); s_c = np.zeros((T, N))
            s_hd = np.zeros((T, NT, 2, 4)); s_p2 = np.zeros((T, NT, 2)); s_p1 = np.zeros((T, NT))
            for k in range(nck - 1, -1, -1):
                t0 = k * T; tl = min(seqlen - t0, T)
                for tid in range(NT):
                    r = R[tid]
                    for e in range(E):
                        idx = tid + e * NT
                        if idx < T * CPB:
                            t, c = idx // CPB, idx % CPB
                            dtv = spv = gv = gzv = 0.0
                            if d0 + c < dim:
                                v = r['rdl'][e] + r['rbias']
                                dtv = softplus(v); spv = 1.0 if v > 20 else sigmoid(v)
                                if z is not None:
                                    zz = r['rz'][e]; sg = sigmoid(zz)
                                    gv = r['rg'][e] * zz * sg; gzv = r['rg'][e] * sg * (zz * (1 - sg) + 1)
                                else:
                                    gv = r['rg'][e]
                            s_u[t][c] = r['ru'][e]; s_dt[t][c] = dtv; s_sp[t][c] = spv; s_g[t][c] = gv; s_gz[t][c] = gzv
                            s_b[t][c] = r['rb'][e]; s_c[t][c] = r['rcc'][e]
                    r['hh'] = [r['rck'][i] if k + 1 < nck else r['h'][i] for i in range(NPT)]
                # barrier
                for tid in range(NT):
                    r = R[tid]
                    if k > 0: load(tid, k - 1, True)
                    ch, part = r['ch'], r['part']; nt = tl
                    for t in range(nt):
                        dt = s_dt[t][ch]; dx = dt * s_u[t][ch]
                        bs = s_b[t][part * 4: part * 4 + 4]
                        ev = [2.0 ** (dt * r['a2'][i]) for i in range(4)]
                        for i in range(4): r['hh'][i] = ev[i] * r['hh'][i] + dx * bs[i]
                        s_hd[t][tid][0] = r['hh']; s_hd[t][tid][1] = ev
                    for t in range(nt - 1, -1, -1):
                        dt = s_dt[t][ch]; x = s_u[t][ch]; g = s_g[t][ch]; dtx = dt * x
                        bs = s_b[t][part * 4: part * 4 + 4]; cs = s_c[t][part * 4: part * 4 + 4]
                        hc = list(s_hd[t][tid][0]); dec = list(s_hd[t][tid][1])
                        pb = [0.0]*4; pc = [0.0]*4; pout = pbs = pqa = 0.0
                        for i in range(4):
                            dhs = g * cs[i] + r['dh'][i]
                            pb[i] = dhs * dtx; pc[i] = g * hc[i]; pout += cs[i] * hc[i]; pbs += dhs * bs[i]
                            q = dhs * (hc[i] - dtx * bs[i]); r['da'][i] += q * dt; pqa += q * r['av'][i]; r['dh'][i] = dhs * dec[i]
                        s_hd[t][tid][0] = pb; s_hd[t][tid][1] = pc; s_p2[t][tid] = (pbs, pqa); s_p1[t][tid] = pout
                # barrier
                for tid in range(NT):
                    r = R[tid]
                    for e in range(E):
                        idx = tid + e * NT
                        if idx < tl * CPB:
                            t, c = idx // CPB, idx % CPB
                            sbs = sqa = sout = 0.0
                            for p in range(SPLIT):
                                sbs += s_p2[t][c * SPLIT + p][0]; sqa += s_p2[t][c * SPLIT + p][1]; sout += s_p1[t][c * SPLIT + p]
                            dt, x, g = s_dt[t][c], s_u[t][c], s_g[t][c]
                            ddt = (x * sbs + sqa) * s_sp[t][c]
                            if r['rd'] < dim:
                                rr = row0 + t0 + t
                                du[rr * dim + r['rd']] = dt * sbs + g * r['rdsk']
                                ddelta[rr * dim + r['rd']] = ddt
                                if dz is not None: dz[rr * dim + r['rd']] = (r['rdsk'] * x + sout) * s_gz[t][c]
                            r['dd_acc'] += g * x; r['dbias_acc'] += ddt
                    if tid < tl * SPLIT:
                        t, p = tid // SPLIT, tid % SPLIT
                        sb = np.array(s_hd[t][p][0]); sc = np.array(s_hd[t][p][1])
                        for c in range(1, CPB):
                            sb = sb + s_hd[t][c * SPLIT + p][0]; sc = sc + s_hd[t][c * SPLIT + p][1]
                        base = (bx * rows + row0 + t0 + t) * (2 * N) + p * 4
                        pbc[base: base + 4] = sb; pbc[base + N: base + N + 4] = sc
            # 3.
            pp = b * dim * (N + 2)
            for tid in range(NT):
                r = R[tid]
                if r['active']:
                    for i in range(4): pparam[pp + r['d'] * N + r['part'] * 4 + i] = r['da'][i]
            s_red = np.zeros(2 * NT)
            for tid in range(NT): s_red[tid] = R[tid]['dd_acc']; s_red[NT + tid] = R[tid]['dbias_acc']
            for tid in range(CPB):
                rd = d0 + tid
                if rd < dim:
                    pparam[pp + dim * N + rd] = sum(s_red[tid + j * CPB] for j in range(NT // CPB))
                    pparam[pp + dim * N + dim + rd] = sum(s_red[NT + tid + j * CPB] for j in range(NT // CPB))
    # the reduce kernels
    dB = np.zeros((rows, N)); dC = np.zeros((rows, N))
    for row in range(rows):
        for s in range(N):
            dB[row, s] = sum(pbc[(blk * rows + row) * 2 * N + s] for blk in range(nblk))
            dC[row, s] = sum(pbc[(blk * rows + row) * 2 * N + N + s] for blk in range(nblk))
    P = pparam.reshape(batch, dim * (N + 2)).sum(0)
    return du, ddelta, dz, dB, dC, P[:dim * N], P[dim * N: dim * N + dim], P[dim * N + dim:]

def forward(u, delta, dbias, a, bm, cm, dskip, z, batch, seqlen, dim, N=16):
    U = u.reshape(batch, seqlen, dim); Dl = delta.reshape(batch, seqlen, dim); Bm = bm.reshape(batch, seqlen, N); Cm = cm.reshape(batch, seqlen, N)
    A = a.reshape(dim, N); Z = z.reshape(batch, seqlen, dim) if z is not None else None
    x = Dl + dbias
    dt = np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))
    h = np.zeros((batch, dim, N)); ys = []
    for t in range(seqlen):
        h = np.exp(dt[:, t, :, None] * A[None]) * h + (dt[:, t, :] * U[:, t, :])[:, :, None] * Bm[:, t, None, :]
        y = np.einsum('bdn,bn->bd', h, Cm[:, t]) + dskip * U[:, t]
        if Z is not None: y = y * Z[:, t] / (1 + np.exp(-Z[:, t]))
        ys.append(y)
    return np.stack(ys, 1).reshape(-1)

def main(T, batch, seqlen, dim, gate, seed):
    rng = np.random.default_rng(seed); N = 16
    rows = batch * seqlen
    u = rng.uniform(-2, 2, rows * dim); delta = rng.uniform(-3, 1, rows * dim); dbias = rng.uniform(-2, 0.5, dim)
    a = -np.exp(rng.uniform(-1, 1.5, dim * N)); bm = rng.uniform(-1.5, 1.5, rows * N); cm = rng.uniform(-1.5, 1.5, rows * N)
    dskip = rng.uniform(-1, 1, dim); z = rng.uniform(-3, 3, rows * dim) if gate else None; dy = rng.uniform(-1, 1, rows * dim)
    got = kernel(T, u, delta, dbias, a, bm, N, cm, N, dskip, z, dim, dy, seqlen, dim, batch)
    names = ['du', 'ddelta', 'dz', 'dB', 'dC', 'dA', 'dD', 'dbias']
    inputs = {'du': u, 'ddelta': delta, 'dz': z, 'dB': bm, 'dC': cm, 'dA': a, 'dD': dskip, 'dbias': dbias}
    L = lambda: float(forward(u, delta, dbias, a, bm, cm, dskip, z, batch, seqlen, dim) @ dy)
    worst = 0.0
    for name, g in zip(names, got):
        arr = inputs[name]
        if arr is None: continue
        g = np.asarray(g).reshape(-1)
        idxs = rng.choice(arr.size, min(arr.size, 25), replace=False)
        for i in idxs:
            old = arr[i]; eps = 1e-6
            arr[i] = old + eps; lp = L(); arr[i] = old - eps; lm = L(); arr[i] = old
            fd = (lp - lm) / (2 * eps)
            err = abs(fd - g[i]) / (1e-6 + abs(fd) + 1e-3)
            worst = max(worst, err)
            if err > 1e-4:
                print(f"T={T} b{batch} l{seqlen} d{dim} gate {gate}: {name}[{i}] kernel {g[i]:.8g} fd {fd:.8g}")
                return False
    print(f"T={T} b{batch} l{seqlen} d{dim} gate {gate}: ok (worst rel err {worst:.2e})")
    return True

if __name__ == '__main__':
    ok = True
    for T in (7, 14):
        for (batch, seqlen, dim, gate) in [(1, 1, 5, True), (2, 17, 20, True), (1, 30, 37, False), (2, 70, 18, True)]:
            ok &= main(T, batch, seqlen, dim, gate, 1 + seqlen)
    sys.exit(0 if ok else 1)
