"""Every parameter of a simulated study, in one frozen dataclass.

:class:`StudyConfig` is what :class:`~fungi_ssl.simulate.study.SimulatedStudy`
is built from and what the sampling functions of
:mod:`~fungi_ssl.simulate.sampling` read; it lives apart from both so that
they import it, and not each other (issue 19: no import circles).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from fungi_ssl.core import config

from .communities import RichnessModel
from .landscape import LandscapeModel
from .sensors import SensorModel

__all__ = ["StudyConfig"]


@dataclass(frozen=True)
class StudyConfig:
    """Parameters of a simulated study. Same config, same study, bit for bit.

    Attributes
    ----------
    seed : int
        Master seed.
    n_samples : int
        Soil samples (cores) to draw before the sequencing-depth filter.
    n_campaigns : int
        Sampling campaigns (studies); each has its own region, year,
        habitat focus, sequencing depth and primer bias.
    mean_cores_per_site : float
        Mean cores per site (the real European table has 2.3).
    singleton_share : float
        Share of sites with one core (real: 2,035 of 3,650 = 0.56).
    max_cores_per_site : int
        Largest site (real: 215).
    site_size_sdlog : float
        Log-SD of the cores of sites with more than one (how heavy the tail
        of large sites is).
    plot_cluster_share : float
        Share of plots placed near an earlier plot of their campaign
        (:func:`~fungi_ssl.simulate.sampling.plot_clusters`).
    plot_cluster_radius_m : float
        Plots of one cluster lie up to this far (m) from its first plot,
        log-uniformly from 10 m.
    plot_cluster_other_class_acceptance : float
        Probability that a plot of a cluster keeps a place of another land-cover
        class than the cluster's first plot (1: any class its campaign takes).
    core_spread_px : int
        Cores lie within this many pixels of the recorded plot coordinate.
    core_sd : float
        Log-SD of core-to-core richness within a pixel (micro-habitat).
    campaign_bias_sd : float
        Log-SD of campaign detection bias (primers, extraction, bioinformatics).
    campaign_bias_regional_share : float
        Share of that bias's variance that the campaigns of one region share
        (a field of :data:`~fungi_ssl.simulate.sampling.CAMPAIGN_BIAS_LENGTH_DEG`).
    campaign_focus_shares : tuple of float
        Share of campaigns that sample forest, forest and open land, and open land.
    forest_campaign_open_acceptance : float
        Probability that a forest campaign keeps a plot that falls on open land.
    open_campaign_woodland_acceptance : float
        Probability that an open-land campaign keeps a plot that falls in woodland.
    campaign_other_class_acceptance : float
        A forest campaign studies one woodland class and an open-land campaign one
        open class; the probability that it keeps a plot of another class of its
        kind (1: any woodland, or any open land, will do).
    campaign_focus_regional_share : float
        Share of the variance of a campaign's latent focus score that the
        campaigns of a region share (a field of ``campaign_focus_length_deg``).
    campaign_focus_length_deg : float
        Length scale (degrees) of that shared focus: a country's research tradition.
    campaign_overlap_share : float
        Share of campaigns set in the region of an earlier campaign
        (:func:`~fungi_ssl.simulate.sampling.draw_campaigns`): studies that
        return to a research forest or a park studied before.
    campaign_radius_km : float
        Median radius of a campaign's region (km).
    campaign_radius_sdlog : float
        Log-SD of campaign radii (national surveys are hundreds of km across).
    median_reads : float
        Median total fungal reads per sample.
    reads_sdlog : float
        Log-SD of total reads per sample; half its variance lies between
        campaigns (each campaign's median depth) and half within them.
    rarefaction_depth : int
        Total reads to which every sample is rarefied; shallower samples get
        ``rarefied = NaN`` as in GlobalFungi.
    otu_pool : int
        ECM OTUs in the regional pool.
    sad_sdlog : float
        Log-SD of the lognormal species-abundance distribution.
    years : tuple of int
        Years with satellite observations and possible sampling.
    coordinate_decimals : tuple of float
        Share of samples whose campaign records coordinates with 1, 2, 3, 4,
        5 and 6 (or more) decimals (real European table: 3.4%, 18.3%, 3.5%,
        9.8%, 23.3%, 41.7%).
    ecm_read_share : float
        Mean share of a sample's fungal reads that are ECM reads, the same in
        every habitat.
    landscape : LandscapeModel
        Stand sizes.
    sensors : SensorModel
        What the satellites and the 1 km products see, and their errors.
    richness : RichnessModel
        Coefficients of true richness.
    """

    seed: int = 0
    n_samples: int = 14_000
    n_campaigns: int = 960
    mean_cores_per_site: float = 2.3
    singleton_share: float = 0.56
    max_cores_per_site: int = 215
    site_size_sdlog: float = 1.6
    plot_cluster_share: float = 0.65
    plot_cluster_radius_m: float = 1_000.0
    plot_cluster_other_class_acceptance: float = 0.3
    core_spread_px: int = 2
    core_sd: float = 0.38
    campaign_bias_sd: float = 0.45
    campaign_bias_regional_share: float = 0.8
    campaign_focus_shares: tuple[float, ...] = (0.55, 0.30, 0.15)
    forest_campaign_open_acceptance: float = 0.12
    open_campaign_woodland_acceptance: float = 0.2
    campaign_other_class_acceptance: float = 1.0
    campaign_focus_regional_share: float = 0.95
    campaign_focus_length_deg: float = 4.0
    campaign_overlap_share: float = 0.0
    campaign_radius_km: float = 8.0
    campaign_radius_sdlog: float = 1.0
    median_reads: float = 12_000.0
    reads_sdlog: float = 0.85
    rarefaction_depth: int = 4_000
    otu_pool: int = 3_000
    sad_sdlog: float = 1.6
    years: tuple[int, ...] = config.YEARS
    coordinate_decimals: tuple[float, ...] = (0.034, 0.183, 0.035, 0.098, 0.233, 0.417)
    ecm_read_share: float = 0.25
    landscape: LandscapeModel = field(default_factory=LandscapeModel)
    sensors: SensorModel = field(default_factory=SensorModel)
    richness: RichnessModel = field(default_factory=RichnessModel)

    def as_dict(self) -> dict:
        """Plain-dict form, used as a cache key and in the book."""
        return asdict(self)
