"""Dev/CI-only fix for the CUDA-built torchvision wheel on a CPU torch (route B, environment.md).

torchvision 0.28's `_meta_registrations.py` registers fake kernels for `torchvision::nms`/`qnms`
unconditionally; with no compiled ops loaded that raises at import time. We guard both registrations
behind `torchvision.extension._has_ops()`. Idempotent. Never run by the product at run time.
"""
import importlib.util
import pathlib
import re
import sys

spec = importlib.util.find_spec("torchvision")
if spec is None or spec.origin is None:
    sys.exit("torchvision is not installed")
path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
src = path.read_text()
if "VSCORE-PATCH" in src:
    print(f"already patched: {path}")
    sys.exit(0)
pattern = re.compile(
    r'^(@torch\.library\.register_fake\("torchvision::(?:nms|qnms)"\)\n)(def \w+\(.*?\):\n(?:(?:    .*|)\n)+?)(?=\S)',
    re.M,
)
count = 0


def guard(m: re.Match) -> str:
    global count
    count += 1
    body = "".join("    " + line + "\n" if line else "\n" for line in (m.group(1) + m.group(2)).splitlines())
    return "if torchvision.extension._has_ops():  # VSCORE-PATCH\n" + body + "\n"


new = pattern.sub(guard, src)
if count != 2:
    sys.exit(f"expected 2 registrations to guard, found {count}; torchvision changed, check by hand")
if "import torchvision" not in new.split("\n@", 1)[0]:
    new = "import torchvision\nimport torchvision.extension\n" + new
path.write_text(new)
print(f"patched {count} registrations in {path}")
