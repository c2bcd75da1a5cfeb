"""Landmark training runs and their compute, to place a dlscale run in history.

Compute is in petaflop/s-days: 1 PF/s-day = 1e15 FLOP/s x 86400 s = 8.64e19 FLOPs.
The table is Python data (no package data file to ship).

Sources: the 2012-2017 points are read off OpenAI's "AI and Compute" chart (Amodei &
Hernandez, 2018-05-16, https://openai.com/research/ai-and-compute), transcribed by a
third party; GPT-3 is Brown et al. 2020 ("Language Models are Few-Shot Learners"),
Table D.1: 3.14e23 FLOPs. Years are the year of publication (first preprint).
"""

from __future__ import annotations

from dataclasses import dataclass

from dlscale.units import pfs_days

AI_AND_COMPUTE = "OpenAI, AI and Compute (2018), chart value (third-party transcription)"
GPT3 = "Brown et al. 2020, Language Models are Few-Shot Learners, Table D.1: 3.14e23 FLOPs"


@dataclass(frozen=True)
class Landmark:
    name: str
    year: int
    pfs_days: float
    source: str

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "year": self.year, "pfs_days": self.pfs_days, "source": self.source}


LANDMARKS: tuple[Landmark, ...] = (
    Landmark("AlexNet", 2012, 0.0058, AI_AND_COMPUTE),
    Landmark("Dropout", 2012, 0.0021, AI_AND_COMPUTE),
    Landmark("DQN", 2013, 2.7e-5, AI_AND_COMPUTE),
    Landmark("Visualizing and Understanding ConvNets", 2013, 0.0062, AI_AND_COMPUTE),
    Landmark("GANs", 2014, 0.006, AI_AND_COMPUTE),
    Landmark("VGG", 2014, 0.098, AI_AND_COMPUTE),
    Landmark("Seq2Seq", 2014, 0.093, AI_AND_COMPUTE),
    Landmark("GoogleNet", 2014, 0.018, AI_AND_COMPUTE),
    Landmark("DeepSpeech2", 2015, 0.24, AI_AND_COMPUTE),
    Landmark("ResNets", 2015, 0.12, AI_AND_COMPUTE),
    Landmark("Neural Machine Translation", 2016, 79.4, AI_AND_COMPUTE),
    Landmark("Xception", 2016, 5.21, AI_AND_COMPUTE),
    Landmark("Neural Architecture Search", 2016, 32.0, AI_AND_COMPUTE),
    Landmark("Transformer", 2017, 0.089, AI_AND_COMPUTE),
    Landmark("TI7 Dota 1v1", 2017, 6.97, AI_AND_COMPUTE),
    Landmark("AlphaZero", 2017, 420.0, AI_AND_COMPUTE),
    Landmark("AlphaGo Zero", 2017, 1860.0, AI_AND_COMPUTE),
    Landmark("GPT-3 175B", 2020, pfs_days(3.14e23), GPT3),
)

RANK_BASIS = "number of landmarks that used strictly less compute (0 = less than all of them)"


def landmark(name: str) -> Landmark:
    for entry in LANDMARKS:
        if entry.name == name:
            return entry
    raise KeyError(name)


def rank_among(run_pfs_days: float) -> int:
    """How many landmarks used strictly less compute than ``run_pfs_days``.

    0 means the run used no more than the smallest landmark; ``len(LANDMARKS)`` means it
    used more than every landmark. A tie does not count as "less".
    """
    return sum(1 for entry in LANDMARKS if entry.pfs_days < run_pfs_days)


def nearest(run_pfs_days: float, count: int = 2) -> list[Landmark]:
    """The ``count`` landmarks closest to the run on a log scale, smallest compute first."""
    import math

    value = max(run_pfs_days, 1e-300)
    ranked = sorted(LANDMARKS, key=lambda e: abs(math.log10(e.pfs_days) - math.log10(value)))
    return sorted(ranked[:count], key=lambda e: e.pfs_days)


@dataclass(frozen=True)
class Trend:
    """A straight line through log2(PF/s-days) against year: compute doubling at a steady pace."""

    first_year: int
    last_year: int
    doublings_per_year: float
    log2_at_year_zero: float
    points: int

    @property
    def doubling_months(self) -> float:
        return 12.0 / self.doublings_per_year

    def pfs_days_at(self, year: float) -> float:
        return 2.0 ** (self.log2_at_year_zero + self.doublings_per_year * year)


def doubling_trend(entries: tuple[Landmark, ...] = LANDMARKS, first_year: int = 2012, last_year: int = 2018) -> Trend:
    """Least squares of log2(PF/s-days) on year over the landmarks of ``first_year``..``last_year``:
    the fit behind OpenAI's "doubling every 3.4 months" (AI and Compute, 2018)."""
    import math

    points = [(float(e.year), math.log2(e.pfs_days)) for e in entries if first_year <= e.year <= last_year and e.pfs_days > 0]
    years = {x for x, _ in points}
    if len(years) < 2:
        raise ValueError(f"a trend needs landmarks from at least two years in {first_year}-{last_year}")
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    return Trend(first_year, last_year, slope, mean_y - slope * mean_x, len(points))
