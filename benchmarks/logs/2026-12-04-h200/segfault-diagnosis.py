import sys
import torch
from reste import cuda_ext
print(cuda_ext.build(cuda=True), flush=True)
for dev in sys.argv[1:]:
    x = torch.randn(4, device=dev)
    for call in ("sign_double", "backward_nope", "forward_groups"):
        try:
            if call == "sign_double":
                torch.ops.reste_ext.sign(x.double())
            elif call == "backward_nope":
                torch.ops.reste_ext.backward(x, x, "nope", [0.0] * 5, 0)
            else:
                torch.ops.reste_ext.scaled_sign_forward(x, 3, None)
            print(dev, call, "no error", flush=True)
        except RuntimeError as e:
            print(dev, call, "raised:", str(e).splitlines()[0], flush=True)
print("done", flush=True)
