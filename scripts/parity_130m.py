# Logits parity at real size: an `s6 init --preset mamba-130m` checkpoint run by HF transformers
# (fp32, CPU reference path) and by `s6 logits` on the same input.
import sys, time, torch, numpy as np
from transformers import MambaForCausalLM
from safetensors.numpy import save_file, load_file
d = sys.argv[1]
torch.manual_seed(0)
m = MambaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
ids = torch.randint(0, 50280, (2, 128), generator=torch.Generator().manual_seed(0))
t = time.time()
with torch.no_grad():
    ref = m(ids).logits.numpy()
print("hf forward s", round(time.time() - t, 2))
save_file({"input_ids": ids.numpy()}, "/tmp/in.safetensors")
np.save("/tmp/ref.npy", ref)
