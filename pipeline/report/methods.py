"""Methods boilerplate generated from what ran: stages, tools and versions, settings, references.

In the spirit of fMRIPrep's boilerplate: the paragraph names only the steps that produced outputs
for this session (:func:`stages_from_outputs`), with the settings from the effective
configuration, and cites the methods used.
"""
from __future__ import annotations

import importlib.metadata as _md
from typing import Any, Iterable, Mapping

from gliaflow.pipeline.report.html import esc

__all__ = ["REFERENCES", "tool_versions", "stages_from_outputs", "methods_text", "methods_html",
           "group_methods_text"]

REFERENCES: dict[str, str] = {
    "avants2008": "Avants BB, Epstein CL, Grossman M, Gee JC. Symmetric diffeomorphic image registration "
                  "with cross-correlation: evaluating automated labeling of elderly and neurodegenerative "
                  "brain. Med Image Anal. 2008;12(1):26-41. doi:10.1016/j.media.2007.06.004",
    "tustison2010": "Tustison NJ, Avants BB, Cook PA, Zheng Y, Egan A, Yushkevich PA, Gee JC. N4ITK: "
                    "improved N3 bias correction. IEEE Trans Med Imaging. 2010;29(6):1310-1320. "
                    "doi:10.1109/TMI.2010.2046908",
    "avants2011": "Avants BB, Tustison NJ, Wu J, Cook PA, Gee JC. An open source multivariate framework "
                  "for n-tissue segmentation with evaluation on public data. Neuroinformatics. "
                  "2011;9(4):381-400. doi:10.1007/s12021-011-9109-y",
    "power2012": "Power JD, Barnes KA, Snyder AZ, Schlaggar BL, Petersen SE. Spurious but systematic "
                 "correlations in functional connectivity MRI networks arise from subject motion. "
                 "NeuroImage. 2012;59(3):2142-2154. doi:10.1016/j.neuroimage.2011.10.018",
    "rousset1998": "Rousset OG, Ma Y, Evans AC. Correction for partial volume effects in PET: principle "
                   "and validation. J Nucl Med. 1998;39(5):904-911.",
    "logan1990": "Logan J, Fowler JS, Volkow ND, et al. Graphical analysis of reversible radioligand "
                 "binding from time-activity measurements applied to [N-11C-methyl]-(-)-cocaine PET "
                 "studies in human subjects. J Cereb Blood Flow Metab. 1990;10(5):740-747. "
                 "doi:10.1038/jcbfm.1990.127",
    "ichise2002": "Ichise M, Toyama H, Innis RB, Carson RE. Strategies to improve neuroreceptor parameter "
                  "estimation by linear regression analysis. J Cereb Blood Flow Metab. "
                  "2002;22(10):1271-1281. doi:10.1097/01.WCB.0000038000.34930.4E",
    "feng1993": "Feng D, Huang SC, Wang X. Models for computer simulation studies of input functions "
                "for tracer kinetic modeling with positron emission tomography. Int J Biomed Comput. "
                "1993;32(2):95-110. doi:10.1016/0020-7101(93)90049-C",
    "albrecht2019": "Albrecht DS, Forsberg A, Sandström A, et al. Brain glial activation in "
                    "fibromyalgia - A multi-site positron emission tomography investigation. Brain "
                    "Behav Immun. 2019;75:72-83. doi:10.1016/j.bbi.2018.09.018",
    "benjamini1995": "Benjamini Y, Hochberg Y. Controlling the false discovery rate: a practical and "
                     "powerful approach to multiple testing. J R Stat Soc B. 1995;57(1):289-300.",
    "hedges1981": "Hedges LV. Distribution theory for Glass's estimator of effect size and related "
                  "estimators. J Educ Stat. 1981;6(2):107-128. doi:10.3102/10769986006002107",
    "smith2009": "Smith SM, Nichols TE. Threshold-free cluster enhancement: addressing problems of "
                 "smoothing, threshold dependence and localisation in cluster inference. NeuroImage. "
                 "2009;44(1):83-98. doi:10.1016/j.neuroimage.2008.03.061",
    "winkler2014": "Winkler AM, Ridgway GR, Webster MA, Smith SM, Nichols TE. Permutation inference for "
                   "the general linear model. NeuroImage. 2014;92:381-397. "
                   "doi:10.1016/j.neuroimage.2014.01.060",
}

# distribution name -> label shown in the methods
_TOOLS = (("gliaflow", "gliaflow"), ("antspyx", "ANTsPy"), ("nibabel", "NiBabel"), ("numpy", "NumPy"),
          ("scipy", "SciPy"), ("pandas", "pandas"), ("nilearn", "Nilearn"), ("matplotlib", "Matplotlib"),
          ("statsmodels", "statsmodels"), ("prefect", "Prefect"), ("dask", "Dask"), ("nipype", "Nipype"))

# output key -> the stage that produced it (the StageResult.outputs keys of gliaflow.pipeline.session)
_STAGE_KEYS = {
    "anat": ("t1w_preproc", "brain_mask", "dseg", "probseg_gm", "xfm_t1w_to_template"),
    "pet_motion": ("pet_hmc", "petref", "motion_tsv", "xfm_hmc"),
    "coreg": ("xfm_petref_to_t1w",),
    "labels_tacs": ("dseg_pet", "tacs", "tacs_pvc", "ref_masks"),
    "kinetics": ("regional_metrics", "fits_tsv", "plasma_tsv"),
}


def tool_versions(names: Iterable[tuple[str, str]] = _TOOLS) -> dict[str, str]:
    """Installed versions of the tools gliaflow uses (label -> version; absent tools omitted)."""
    out = {}
    for dist, label in names:
        try:
            out[label] = _md.version(dist)
        except _md.PackageNotFoundError:
            if dist == "gliaflow":
                from gliaflow.pipeline import __version__

                out[label] = __version__
    return out


def stages_from_outputs(outputs: Mapping[str, Any]) -> list[str]:
    """Which processing stages ran, judged from the output keys they produce."""
    keys = set(outputs)
    ran = [s for s, ks in _STAGE_KEYS.items() if keys & set(ks)]
    if "kinetics" not in ran and any(k.startswith("map_") for k in keys):
        ran.append("kinetics")
    return ran


def _get(cfg: Mapping[str, Any], section: str, key: str) -> Any:
    """A setting from the config dump, falling back to the PipelineConfig default (so the text
    never states a value the pipeline would not use)."""
    sec = cfg.get(section) or {}
    if isinstance(sec, Mapping) and key in sec:
        return sec[key]
    from gliaflow.pipeline.config import PipelineConfig

    return getattr(getattr(PipelineConfig.model_construct(), section, None), key, None)


def _join(items: list[str]) -> str:
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


_MODEL_TEXT = {
    "suv": ("the standardised uptake value (SUV, uptake / (injected dose / body weight))", []),
    "suvr": ("the SUV ratio (SUVR) to a pseudo-reference region", []),
    "1tcm": ("the one-tissue compartment model (1TCM)", []),
    "2tcm": ("the reversible two-tissue compartment model (2TCM)", []),
    "logan": ("the Logan graphical analysis {logan1990}", ["logan1990"]),
    "ma1": ("multilinear analysis MA1 {ichise2002}", ["ichise2002"]),
    "srtm": ("the simplified reference tissue model (SRTM)", []),
    "mrtm2": ("the multilinear reference tissue model MRTM2 {ichise2002}", ["ichise2002"]),
}


def methods_text(config: Mapping[str, Any], stages: Iterable[str], tracer: str | None = None,
                 versions: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Methods paragraphs for the stages that ran, and the reference keys they cite.

    Parameters
    ----------
    config : dict
        The effective configuration (``PipelineConfig.model_dump(mode="json")``); missing
        sections fall back to neutral wording.
    stages : iterable of str
        Stages that ran (anat, pet_motion, coreg, labels_tacs, kinetics).
    tracer : str, optional
        Tracer name from the PET sidecar (TracerName).
    versions : dict, optional
        Tool label -> version (default: :func:`tool_versions`).

    Returns
    -------
    (paragraphs, reference keys) : plain-text paragraphs with citation placeholders replaced by
    numbers ``[n]``, and the keys of :data:`REFERENCES` in citation order.
    """
    versions = dict(tool_versions() if versions is None else versions)
    stages = list(stages)
    cited: list[str] = []

    def cite(*keys: str) -> str:
        nums = []
        for k in keys:
            if k not in cited:
                cited.append(k)
            nums.append(str(cited.index(k) + 1))
        return "[" + ", ".join(nums) + "]"

    paras: list[str] = []
    gv = versions.get("gliaflow", "unknown")
    tools = _join([f"{k} {v}" for k, v in versions.items() if k != "gliaflow"])
    tr = f" {tracer}" if tracer else ""
    paras.append(f"The{tr} PET data were processed with gliaflow {gv}, which uses {tools}.")
    if "anat" in stages:
        n4 = _get(config, "segmentation", "n4")
        transform = _get(config, "segmentation", "transform")
        res = _get(config, "segmentation", "template_resolution_mm")
        pw = _get(config, "segmentation", "prior_weight")
        s = "The T1-weighted image was "
        s += (f"corrected for intensity non-uniformity with N4 {cite('tustison2010')}, " if n4 else "")
        s += ("skull-stripped and segmented into grey matter, white matter and CSF with Atropos "
              f"{cite('avants2011')} using MNI152 2009 tissue priors (prior weight {pw}). It was "
              f"normalised to the MNI152 2009 template with ANTs {transform} {cite('avants2008')} at "
              f"{res} mm.")
        paras.append(s)
    if "pet_motion" in stages:
        st = _get(config, "motion", "start_time_s")
        md = _get(config, "motion", "min_frame_duration_s")
        ref = _get(config, "motion", "reference_start_s")
        fw = _get(config, "motion", "smoothing_fwhm_mm")
        rad = _get(config, "motion", "fd_radius_mm")
        paras.append(
            f"Head motion was corrected by rigid realignment of every frame starting after {st:g} s "
            f"and lasting at least {md:g} s to the duration-weighted mean of the frames starting at "
            f"or after {ref:g} s (images smoothed with a {fw:g} mm FWHM Gaussian); earlier and shorter "
            "frames took the transform of the first registered frame. Framewise displacement was "
            f"computed on a sphere of radius {rad:g} mm {cite('power2012')}.")
    if "coreg" in stages:
        ns = _get(config, "registration", "n_starts")
        thr = _get(config, "registration", "flag_similarity_below")
        paras.append(
            "The PET reference image was registered to the T1-weighted image with a rigid (6 degrees "
            f"of freedom) transform maximising Mattes mutual information in ANTs {cite('avants2008')}, "
            f"keeping the best of {ns} initialisations; registrations with a normalised mutual "
            f"information below {thr:g} were flagged.")
    if "labels_tacs" in stages:
        atlas = _get(config, "atlas", "name")
        refs = _get(config, "atlas", "reference_regions") or []
        pvc = _get(config, "tacs", "pvc")
        fwhm = _get(config, "tacs", "psf_fwhm_mm") or _get(config, "tacs", "default_psf_fwhm_mm")
        s = (f"Regions of the {atlas} atlas were brought from template space to the PET via the "
             "inverse normalisation and the PET-to-T1 transform, and regional time-activity curves "
             "(Bq/mL) were extracted")
        s += f"; reference regions: {_join([str(r) for r in refs])}." if refs else "."
        if pvc == "gtm":
            s += (f" Partial-volume effects were corrected with the geometric transfer matrix (GTM) "
                  f"method {cite('rousset1998')} with an isotropic point-spread function of {fwhm:g} mm "
                  "FWHM.")
        elif pvc == "rbv":
            s += (f" Partial-volume effects were corrected with region-based voxelwise correction "
                  f"built on the geometric transfer matrix {cite('rousset1998')} (PSF {fwhm:g} mm FWHM).")
        else:
            s += " No partial-volume correction was applied."
        paras.append(s)
    if "kinetics" in stages:
        models = [str(m) for m in (_get(config, "kinetics", "models") or [])]
        texts = []
        for m in models:
            txt, keys = _MODEL_TEXT.get(m, (m, []))
            texts.append(txt.format(**{k: cite(k) for k in keys}) if keys else txt)
        tstar = _get(config, "kinetics", "tstar_min")
        win = tuple(_get(config, "kinetics", "suvr_window_min"))
        refr = _get(config, "kinetics", "reference_region")
        vb = _get(config, "kinetics", "vb")
        w = _get(config, "kinetics", "weights")
        pf = _get(config, "blood", "parent_fraction_model")
        s = (f"The arterial plasma input was derived from the blood recordings (parent fraction model: "
             f"{pf}). Regional outcome measures were {_join(texts)}")
        s += (f"; the linear phase of the graphical methods started at t* = {tstar:g} min, SUVR used "
              f"{float(win[0]):g}-{float(win[1]):g} min with the {refr} reference, the blood volume "
              f"fraction was {'fitted' if vb is None else f'fixed at {vb:g}'}, and frames were weighted "
              f"by {w}.")
        s += (" Accuracy was verified on a digital phantom whose plasma inputs follow the model of "
              f"Feng et al. {cite('feng1993')}.")
        paras.append(s)
    if tracer and "pbr28" in tracer.lower().replace("-", "").replace("[", "").replace("]", ""):
        paras.append(f"TSPO quantification with [11C]PBR28 follows Albrecht et al. {cite('albrecht2019')}; "
                     "binding depends on the rs6971 genotype (HAB/MAB/LAB), which must be modelled "
                     "in group analyses.")
    return paras, cited


def group_methods_text(stats: Mapping[str, Any] | None) -> tuple[list[str], list[str]]:
    """Methods paragraph for the group statistics (``stats`` is the StatsSettings dump)."""
    stats = dict(stats or {})
    cited: list[str] = []

    def cite(*keys: str) -> str:
        for k in keys:
            if k not in cited:
                cited.append(k)
        return "[" + ", ".join(str(cited.index(k) + 1) for k in keys) + "]"

    cov = _join([str(c) for c in stats.get("covariates", ["tspo_genotype"])])
    s = (f"Regional metrics were compared between {stats.get('patient_label', 'patient')}s and "
         f"{stats.get('control_label', 'control')}s with a linear model adjusting for {cov or 'no covariates'}; "
         f"effect sizes are Hedges' g with 95% confidence intervals {cite('hedges1981')} and p values "
         f"were corrected across regions with the Benjamini-Hochberg false discovery rate "
         f"(q = {stats.get('fdr_alpha', 0.05)}) {cite('benjamini1995')}.")
    if stats.get("voxelwise", True):
        s += (f" Voxelwise maps (smoothed {stats.get('smoothing_fwhm_mm', 6.0):g} mm FWHM) were tested "
              f"with {stats.get('n_permutations', 1000)} Freedman-Lane permutations {cite('winkler2014')}"
              + (f" and threshold-free cluster enhancement {cite('smith2009')}" if stats.get("tfce", True) else "")
              + ", controlling the family-wise error rate.")
    s += f" The TSPO-PET study design follows Albrecht et al. {cite('albrecht2019')}."
    return [s], cited


def methods_html(paragraphs: list[str], cited: list[str]) -> str:
    """Paragraphs plus a numbered reference list, as HTML."""
    body = "".join(f"<p>{esc(p)}</p>" for p in paragraphs)
    refs = "".join(f"<li>{esc(REFERENCES[k])}</li>" for k in cited)
    return body + (f'<h3>References</h3><ol class="refs">{refs}</ol>' if refs else "")
