"""Parse VideoScore2's generated text into three hard scores and a rationale.

Strict mode is the official parser (``vs2_inference.py``): one IGNORECASE|DOTALL ``re.search`` of the
regex below over the text decoded with ``skip_special_tokens=True``; first match; ``int()``; no range
check, no clamp. It decides the hard scores whenever it matches.

Only when strict fails, a tolerant fallback (flagged ``parse_mode="tolerant"``, non-official) accepts the
failure shapes seen in the wild (../shared/docs/videoscore2.md section 4a): descriptors between the label
and the colon (``visual quality - clarity, ...: 3``), ``3/5`` notation, markdown bold, the label
``Physical consistency``; scores after the last ``</think>`` are preferred over scores inside the CoT.
Out-of-range values are kept as parsed and flagged (``out_of_range``), never clamped.
"""

from __future__ import annotations

import dataclasses
import re

DIMENSIONS = ("visual_quality", "text_alignment", "physical_consistency")

STRICT_PATTERN = (
    r"visual quality:\s*(\d+).*?text-to-video alignment:\s*(\d+).*?physical/common-sense consistency:\s*(\d+)"
)
STRICT_RE = re.compile(STRICT_PATTERN, re.DOTALL | re.IGNORECASE)

_LABELS_TOLERANT = {
    "visual_quality": r"visual[ _-]*quality",
    "text_alignment": r"(?:text[ _-]*to[ _-]*video|t2v)[ _-]*alignment",
    "physical_consistency": r"(?:physical(?:\s*/\s*common[ _-]*sense)?|common[ _-]*sense)[ _-]*consistency",
}
# label, then anything but a colon or newline (descriptors, "**", "(...)"), a colon, optional markup,
# the integer, optionally "/5" or ".0"
_TOLERANT_RE = {
    dim: re.compile(rf"{lab}[^:\n]{{0,120}}:\s*[*_`]*\s*(\d+)(?:\.0+)?(?:\s*/\s*5)?", re.IGNORECASE)
    for dim, lab in _LABELS_TOLERANT.items()
}
_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)


@dataclasses.dataclass
class ParsedScores:
    visual_quality: int | None
    text_alignment: int | None
    physical_consistency: int | None
    parse_mode: str
    """"strict" (official regex), "tolerant" (fallback) or "failed"."""
    out_of_range: bool
    rationale: str | None

    def as_tuple(self) -> tuple[int | None, int | None, int | None]:
        return (self.visual_quality, self.text_alignment, self.physical_consistency)


def parse_strict(text: str) -> tuple[int, int, int] | None:
    m = STRICT_RE.search(text)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def parse_tolerant(text: str) -> tuple[int, int, int] | None:
    """Each label's last match after the last ``</think>``; else each label's last match anywhere."""
    cut = text.lower().rfind("</think>")
    regions = [text[cut + len("</think>"):]] if cut >= 0 else []
    regions.append(text)
    for region in regions:
        found = []
        for dim in DIMENSIONS:
            matches = list(_TOLERANT_RE[dim].finditer(region))
            if not matches:
                break
            found.append(int(matches[-1].group(1)))
        if len(found) == 3:
            return found[0], found[1], found[2]
    return None


def extract_rationale(text: str) -> str | None:
    """The chain of thought: text inside the first ``<think>...</think>``; when the model printed only
    ``...</think>`` (the opening tag in the prompt or dropped), everything before it; else None."""
    m = _THINK_RE.search(text)
    if m:
        return m.group(1).strip()
    cut = text.lower().find("</think>")
    if cut >= 0:
        return text[:cut].replace("<think>", "").strip()
    return None


def parse_output(text: str) -> ParsedScores:
    scores = parse_strict(text)
    mode = "strict"
    if scores is None:
        scores = parse_tolerant(text)
        mode = "tolerant"
    if scores is None:
        return ParsedScores(None, None, None, "failed", False, extract_rationale(text))
    oor = any(not 1 <= s <= 5 for s in scores)
    return ParsedScores(*scores, parse_mode=mode, out_of_range=oor, rationale=extract_rationale(text))
