"""XLA's temporary allocation (compiled memory analysis) of one jitted value_and_grad, the
linear-head losses against the naive jnp versions on hidden @ W.T + b: JAX CPU float32,
N=8192, H=1024, C=32768. Compiles only (nothing runs); not a test.

    python benchmarks/linear_head_jax.py
"""
import time, jax, jax.numpy as jnp, entroloss as el
N,H,C=8192,1024,32768
h=jax.ShapeDtypeStruct((N,H),jnp.float32); w=jax.ShapeDtypeStruct((C,H),jnp.float32); b=jax.ShapeDtypeStruct((C,),jnp.float32)
y=jax.ShapeDtypeStruct((N,),jnp.int32)
def naive_ce(h,w,b,y):
    z=h@w.T+b; lse=jax.nn.logsumexp(z,axis=-1); return jnp.mean(lse-jnp.take_along_axis(z,y[:,None],axis=-1)[:,0])
cands={"naive jnp cross entropy":naive_ce,
 "el.cross_entropy(h @ W.T + b)":lambda h,w,b,y: el.cross_entropy(h@w.T+b,y),
 "el.linear_cross_entropy":lambda h,w,b,y: el.linear_cross_entropy(h,w,y,bias=b),
 "el.min_ent(h @ W.T + b)":lambda h,w,b,y: el.min_ent(h@w.T+b,y),
 "el.linear_min_ent":lambda h,w,b,y: el.linear_min_ent(h,w,y,bias=b),
 "el.entropy(h @ W.T + b).mean()":lambda h,w,b,y: el.entropy(h@w.T+b).mean(),
 "el.linear_entropy(...).mean()":lambda h,w,b,y: el.linear_entropy(h,w,bias=b).mean()}
print("| candidate | temp (MiB) | output (MiB) | compile (s) |")
print("|---|---:|---:|---:|")
for name,f in cands.items():
    t=time.perf_counter()
    c=jax.jit(jax.value_and_grad(f,argnums=(0,1,2))).lower(h,w,b,y).compile()
    m=c.memory_analysis()
    print(f"| `{name}` | {m.temp_size_in_bytes/2**20:.0f} | {m.output_size_in_bytes/2**20:.0f} | {time.perf_counter()-t:.1f} |", flush=True)
