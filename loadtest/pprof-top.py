#!/usr/bin/env python3
"""Where kube-apiserver's CPU went, from a Go CPU profile (pprof's gzipped
protobuf, as /debug/pprof/profile serves it): one markdown table row per
part of the API server's work, with the share of the profile's CPU time
spent in it (a sample counts towards every part whose frame is on its stack, so
the rows overlap). Used by loadtest/bench.sh; standard library only.

    pprof-top.py PROFILE
"""
import collections
import gzip
import sys

# (what it is, part of the name of a frame that only that work runs through)
PARTS = [
    ("status writes (apply or patch of /status)", "customresource.(*StatusREST).Update"),
    ("  of which server-side apply's field management", "fieldmanager.(*FieldManager).Apply"),
    ("  of which schema validation", "validation.ValidateCustomResource"),
    ("decoding objects read from etcd", "storage/etcd3.decode"),
    ("creates (requests, Events)", "handlers.createHandler"),
    ("gets", "handlers.getResourceHandler"),
    ("lists", "handlers.ListResource"),
    ("watches: events from etcd", "etcd3.(*watchChan).processEvent"),
    ("watches: sending to watchers", "handlers.serveWatch"),
    ("Go's garbage collector", "runtime.gcBgMarkWorker"),
]

def varint(b, i):
    r = s = 0
    while True:
        c = b[i]; i += 1
        r |= (c & 0x7f) << s; s += 7
        if c < 0x80: return r, i

def fields(b):
    i = 0
    while i < len(b):
        k, i = varint(b, i)
        f, t = k >> 3, k & 7
        if t == 0:
            v, i = varint(b, i)
        elif t == 2:
            n, i = varint(b, i); v = b[i:i+n]; i += n
        elif t == 1:
            v = b[i:i+8]; i += 8
        elif t == 5:
            v = b[i:i+4]; i += 4
        yield f, t, v

def packed(t, v):
    if t == 0: return [v]
    out, i = [], 0
    while i < len(v):
        x, i = varint(v, i); out.append(x)
    return out

data = gzip.decompress(open(sys.argv[1], "rb").read())
strings, funcs, locs, samples = [], {}, {}, []
for f, t, v in fields(data):
    if f == 6: strings.append(v.decode('utf-8', 'replace'))
    elif f == 5:
        d = {ff: vv for ff, tt, vv in fields(v)}; funcs[d.get(1)] = d.get(2, 0)
    elif f == 4:
        lid, fl = None, []
        for ff, tt, vv in fields(v):
            if ff == 1: lid = vv
            elif ff == 4:
                for f3, t3, v3 in fields(vv):
                    if f3 == 1: fl.append(v3)
        locs[lid] = fl
    elif f == 2:
        ls, vals = [], []
        for ff, tt, vv in fields(v):
            if ff == 1: ls += packed(tt, vv)
            elif ff == 2: vals += packed(tt, vv)
        samples.append((ls, vals[-1] if vals else 0))
total = sum(v for _, v in samples) or 1
stacks = [({strings[funcs[fid]] for l in ls for fid in locs.get(l, [])}, v) for ls, v in samples]
print(f"| (all: {total / 1e9:.1f} s of CPU in the profile) | 100% |")
for what, frame in PARTS:
    share = sum(v for names, v in stacks if any(frame in n for n in names))
    print(f"| {what} | {100 * share / total:.0f}% |")
