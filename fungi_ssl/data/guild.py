"""The fungal guild and target column a chapter speaks about.

The study models ectomycorrhizal (ECM) richness, and the simulator simulates
ECM richness only. A real sample table in the GlobalFungi schema may hold
another guild's rarefied richness (arbuscular mycorrhizal, AM, say), in its
``rarefied`` column or in a column named by the ``target`` parameter. Every
chapter takes ``guild`` and ``target`` parameters (``make book GUILD=AM
TARGET=am_rarefied``, :data:`fungi_ssl.book.notebooks.BOOK_PARAMETERS`) and writes
its text with :func:`chapter_guild`'s answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_GUILD", "DEFAULT_TARGET", "SIMULATED_GUILD", "ChapterGuild", "chapter_guild"]

#: The guild of the study, and of a chapter that is given none.
DEFAULT_GUILD = "ECM"
#: The sample-table column of rarefied richness in the GlobalFungi schema.
DEFAULT_TARGET = "rarefied"
#: The only guild the simulator simulates.
SIMULATED_GUILD = "ECM"


@dataclass(frozen=True)
class ChapterGuild:
    """The guild and target column a chapter runs on.

    Attributes
    ----------
    guild : str
        The guild the data hold (the simulated study: always ECM).
    target : str
        The sample-table column read as rarefied richness.
    note : str
        One sentence for the chapter's top when the parameters were
        overridden (a guild other than ECM asked of the simulated study),
        else "".
    """

    guild: str
    target: str
    note: str = ""

    @property
    def richness(self) -> str:
        """``"rarefied AM richness"``: the label of the target."""
        return f"rarefied {self.guild} richness"

    @property
    def otus(self) -> str:
        """``"AM OTUs"``."""
        return f"{self.guild} OTUs"


def chapter_guild(data_dir: str | Path | None, guild: str = DEFAULT_GUILD,
                  target: str = DEFAULT_TARGET) -> ChapterGuild:
    """The guild a chapter speaks about, given its ``data_dir``, ``guild`` and ``target``.

    Examples
    --------
    >>> chapter_guild("../data/am", "AM", "am_rarefied").richness
    'rarefied AM richness'
    >>> g = chapter_guild("", "AM")
    >>> g.guild, g.note[:43]
    ('ECM', 'The simulated study simulates ECM richness ')
    >>> chapter_guild(None, "")
    Traceback (most recent call last):
    ...
    ValueError: guild must be a non-empty name such as 'ECM' or 'AM', got ''
    """
    for name, value in (("guild", guild), ("target", target)):
        if not isinstance(value, str) or not value.strip():
            example = "'ECM' or 'AM'" if name == "guild" else "'rarefied'"
            raise ValueError(f"{name} must be a non-empty name such as {example}, got {value!r}")
    if data_dir:
        return ChapterGuild(guild.strip(), target.strip())
    note = ""
    if guild.strip() != SIMULATED_GUILD or target.strip() != DEFAULT_TARGET:
        note = (f"The simulated study simulates {SIMULATED_GUILD} richness only, so the "
                f"parameters guild = {guild!r} and target = {target!r} apply to real tables "
                f"(`data_dir`) and this run speaks of {SIMULATED_GUILD}.")
    return ChapterGuild(SIMULATED_GUILD, DEFAULT_TARGET, note)
