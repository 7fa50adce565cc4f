"""Methods boilerplate generated from what ran: the provenance records of the stages.

In the spirit of fMRIPrep's boilerplate, but written only from the
:class:`~gliaflow.pipeline.provenance.ToolCall` records that the stages returned (engines,
gliaflow's own science and the library routines it called): a sentence is written for each
processing step found in the records, naming the tools and versions that did it, with the
settings that describe how it ran; a tool or method is cited only when a record names it. A
session's text comes from its stages' records; the cohort's from the union of every session's
records and the group step's.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import pandas as pd

from gliaflow.pipeline.provenance import (STEP_DELAY, STEP_GROUP_CORRELATION, STEP_GROUP_REGIONAL,
                                          STEP_GROUP_VOXELWISE, STEP_KINETICS, STEP_LABELS_PET,
                                          STEP_MAPS, STEP_PLASMA, STEP_PVC, STEP_TACS, ToolCall,
                                          as_calls, merge_calls, software_used)
from gliaflow.pipeline.report.html import esc

__all__ = ["REFERENCES", "methods_text", "methods_html", "provenance_table", "PROVENANCE_COLUMNS"]

REFERENCES: dict[str, str] = {
    "avants2008": "Avants BB, Epstein CL, Grossman M, Gee JC. Symmetric diffeomorphic image registration "
                  "with cross-correlation: evaluating automated labeling of elderly and neurodegenerative "
                  "brain. Med Image Anal. 2008;12(1):26-41. doi:10.1016/j.media.2007.06.004",
    "avants2011metric": "Avants BB, Tustison NJ, Song G, Cook PA, Klein A, Gee JC. A reproducible "
                        "evaluation of ANTs similarity metric performance in brain image registration. "
                        "NeuroImage. 2011;54(3):2033-2044. doi:10.1016/j.neuroimage.2010.09.025",
    "tustison2021": "Tustison NJ, Cook PA, Holbrook AJ, et al. The ANTsX ecosystem for quantitative "
                    "biological and medical imaging. Sci Rep. 2021;11(1):9068. "
                    "doi:10.1038/s41598-021-87564-6",
    "tustison2010": "Tustison NJ, Avants BB, Cook PA, Zheng Y, Egan A, Yushkevich PA, Gee JC. N4ITK: "
                    "improved N3 bias correction. IEEE Trans Med Imaging. 2010;29(6):1310-1320. "
                    "doi:10.1109/TMI.2010.2046908",
    "avants2011": "Avants BB, Tustison NJ, Wu J, Cook PA, Gee JC. An open source multivariate framework "
                  "for n-tissue segmentation with evaluation on public data. Neuroinformatics. "
                  "2011;9(4):381-400. doi:10.1007/s12021-011-9109-y",
    "gorgolewski2011": "Gorgolewski K, Burns CD, Madison C, Clark D, Halchenko YO, Waskom ML, Ghosh SS. "
                       "Nipype: a flexible, lightweight and extensible neuroimaging data processing "
                       "framework in Python. Front Neuroinform. 2011;5:13. doi:10.3389/fninf.2011.00013",
    "jenkinson2012": "Jenkinson M, Beckmann CF, Behrens TE, Woolrich MW, Smith SM. FSL. NeuroImage. "
                     "2012;62(2):782-790. doi:10.1016/j.neuroimage.2011.09.015",
    "jenkinson2001": "Jenkinson M, Smith S. A global optimisation method for robust affine registration "
                     "of brain images. Med Image Anal. 2001;5(2):143-156. "
                     "doi:10.1016/S1361-8415(01)00036-6",
    "jenkinson2002": "Jenkinson M, Bannister P, Brady M, Smith S. Improved optimization for the robust "
                     "and accurate linear registration and motion correction of brain images. "
                     "NeuroImage. 2002;17(2):825-841. doi:10.1006/nimg.2002.1132",
    "zhang2001": "Zhang Y, Brady M, Smith S. Segmentation of brain MR images through a hidden Markov "
                 "random field model and the expectation-maximization algorithm. IEEE Trans Med "
                 "Imaging. 2001;20(1):45-57. doi:10.1109/42.906424",
    "smith2002": "Smith SM. Fast robust automated brain extraction. Hum Brain Mapp. 2002;17(3):143-155. "
                 "doi:10.1002/hbm.10062",
    "andersson2007": "Andersson JLR, Jenkinson M, Smith S. Non-linear registration, aka spatial "
                     "normalisation. FMRIB technical report TR07JA2. Oxford: FMRIB Centre; 2007.",
    "virtanen2020": "Virtanen P, Gommers R, Oliphant TE, et al. SciPy 1.0: fundamental algorithms for "
                    "scientific computing in Python. Nat Methods. 2020;17(3):261-272. "
                    "doi:10.1038/s41592-019-0686-2",
    "harris2020": "Harris CR, Millman KJ, van der Walt SJ, et al. Array programming with NumPy. "
                  "Nature. 2020;585(7825):357-362. doi:10.1038/s41586-020-2649-2",
    "brett_nibabel": "Brett M, Markiewicz CJ, Hanke M, et al. nipy/nibabel. Zenodo. "
                     "doi:10.5281/zenodo.591597",
    "power2012": "Power JD, Barnes KA, Snyder AZ, Schlaggar BL, Petersen SE. Spurious but systematic "
                 "correlations in functional connectivity MRI networks arise from subject motion. "
                 "NeuroImage. 2012;59(3):2142-2154. doi:10.1016/j.neuroimage.2011.10.018",
    "rousset1998": "Rousset OG, Ma Y, Evans AC. Correction for partial volume effects in PET: principle "
                   "and validation. J Nucl Med. 1998;39(5):904-911.",
    "thomas2011": "Thomas BA, Erlandsson K, Modat M, et al. The importance of appropriate partial "
                  "volume correction for PET quantification in Alzheimer's disease. Eur J Nucl Med "
                  "Mol Imaging. 2011;38(6):1104-1119. doi:10.1007/s00259-011-1745-9",
    "logan1990": "Logan J, Fowler JS, Volkow ND, et al. Graphical analysis of reversible radioligand "
                 "binding from time-activity measurements applied to [N-11C-methyl]-(-)-cocaine PET "
                 "studies in human subjects. J Cereb Blood Flow Metab. 1990;10(5):740-747. "
                 "doi:10.1038/jcbfm.1990.127",
    "ichise2002": "Ichise M, Toyama H, Innis RB, Carson RE. Strategies to improve neuroreceptor parameter "
                  "estimation by linear regression analysis. J Cereb Blood Flow Metab. "
                  "2002;22(10):1271-1281. doi:10.1097/01.WCB.0000038000.34930.4E",
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

# software citations, for every tool named in the records
_TOOL_REFS: dict[str, list[str]] = {
    "ANTs": ["avants2011metric"], "FSL": ["jenkinson2012"], "Nipype": ["gorgolewski2011"],
    "SciPy": ["virtanen2020"], "NumPy": ["harris2020"], "NiBabel": ["brett_nibabel"],
}

# (tool, tokens of the interface that must all appear) -> (method name, references)
_METHODS: list[tuple[str, tuple[str, ...], str, list[str]]] = [
    ("ANTs", ("n4",), "N4", ["tustison2010"]),
    ("ANTs", ("atropos",), "Atropos", ["avants2011"]),
    ("ANTs", ("synonly",), "SyN", ["avants2008"]),
    ("ANTs", ("syn",), "SyN", ["avants2008"]),
    ("ANTs", ("affine",), "affine registration", []),
    ("ANTs", ("rigid",), "rigid registration (Mattes mutual information)", []),
    ("ANTs", ("apply", "transforms"), "antsApplyTransforms", []),
    ("FSL", ("mcflirt",), "MCFLIRT", ["jenkinson2002"]),
    ("FSL", ("flirt",), "FLIRT", ["jenkinson2001", "jenkinson2002"]),
    ("FSL", ("fast",), "FAST", ["zhang2001"]),
    ("FSL", ("bet",), "BET", ["smith2002"]),
    ("FSL", ("fnirt",), "FNIRT", ["andersson2007"]),
    ("FSL", ("applywarp",), "applywarp", []),
]

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

_MAP_TEXT = {"suv": "SUV", "suvr": "SUVR", "logan": "Logan VT", "ma1": "MA1 VT",
             "basis1tcm": "1TCM VT (basis functions)"}

_ANAT_STEPS = ("bias correction", "brain extraction", "tissue segmentation", "template normalization")

PROVENANCE_COLUMNS = ["step", "tool", "version", "interface", "count", "command"]


# --------------------------------------------------------------------------- helpers

class _Citations:
    """Numbers references in order of first use: ``cite('a', 'b')`` -> ``'[1, 2]'``."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, *keys: str) -> str:
        keys = tuple(dict.fromkeys(k for k in keys if k))
        if not keys:
            return ""
        for k in keys:
            if k not in self.keys:
                self.keys.append(k)
        return "[" + ", ".join(str(self.keys.index(k) + 1) for k in keys) + "]"


def _get(cfg: Mapping[str, Any], section: str, key: str) -> Any:
    """A setting from the config dump, falling back to the PipelineConfig default (so the text
    never states a value the pipeline would not use)."""
    sec = cfg.get(section) or {}
    if isinstance(sec, Mapping) and key in sec:
        return sec[key]
    from gliaflow.pipeline.config import PipelineConfig

    return getattr(getattr(PipelineConfig.model_construct(), section, None), key, None)


def _join(items: Iterable[str]) -> str:
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _tokens(interface: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", interface.lower())) - {""}


def _uses_nipype(c: ToolCall) -> bool:
    return c.tool == "Nipype" or c.interface.startswith("nipype.")


def _wraps(nipype_call: ToolCall, tool: str) -> bool:
    """Whether a Nipype record's interface (``nipype.interfaces.fsl.MCFLIRT``) wraps ``tool``."""
    parts = nipype_call.interface.lower().split(".")
    return nipype_call.tool == "Nipype" and parts[:2] == ["nipype", "interfaces"] and \
        len(parts) > 2 and parts[2] == tool.lower()


def _method(c: ToolCall) -> tuple[str, list[str]]:
    """Method name and references of a record (the interface itself when not a known method)."""
    toks = _tokens(c.interface)
    for tool, need, label, refs in _METHODS:
        if c.tool == tool and all(t in toks for t in need):
            return label, refs
    return c.interface, []


def _tool_label(tool: str, version: str | None) -> str:
    """``SciPy 1.13.1``; ``ANTs (ANTsPy 0.6.3)`` when the version names its distribution."""
    if not version or version == "unknown":
        return tool
    return f"{tool} ({version})" if version[:1].isalpha() else f"{tool} {version}"


def _tool_refs(tool: str, version: str | None) -> list[str]:
    refs = list(_TOOL_REFS.get(tool, []))
    if tool == "ANTs" and version and "antspy" in version.lower():
        refs.append("tustison2021")
    return refs


class _Records:
    """The records of a run, by step."""

    def __init__(self, calls: list[ToolCall]):
        self.calls = calls
        self.by_step: dict[str, list[ToolCall]] = {}
        for c in calls:
            self.by_step.setdefault(c.step, []).append(c)

    def has(self, step: str) -> bool:
        return step in self.by_step

    def interfaces(self, step: str, tool: str | None = None) -> list[str]:
        return [c.interface for c in self.by_step.get(step, []) if tool is None or c.tool == tool]

    def how(self, step: str, cite: _Citations) -> str:
        """The tools of a step as text: methods with their references, grouped by tool and
        version, e.g. ``N4 [1] in ANTs (ANTsPy 0.6.3) [2, 3]``; gliaflow's own records are
        left out (the sentence describes gliaflow's method)."""
        calls = self.by_step.get(step, [])
        nipype_calls = [c for c in calls if c.tool == "Nipype"]
        tools = {c.tool for c in calls if c.tool not in ("gliaflow", "Nipype")}
        any_wrapped = any(_uses_nipype(c) and c.tool != "Nipype" for c in calls)
        nipype = next((c.version for c in nipype_calls), None)
        groups: dict[tuple[str, str], list[ToolCall]] = {}
        for c in calls:
            # gliaflow's records: the sentence describes gliaflow's method; a Nipype record
            # beside the tool it wraps (FSL's record next to nipype.interfaces.fsl.*) is said
            # as "through Nipype"
            if c.tool == "gliaflow" or (c.tool == "Nipype" and (
                    any_wrapped or any(_wraps(c, t) for t in tools))):
                continue
            groups.setdefault((c.tool, c.version), []).append(c)
        parts = []
        for (tool, version), group in groups.items():
            methods = []
            for c in group:
                label, refs = _method(c)
                text = f"{label} {cite(*refs)}".strip()
                if text not in methods:
                    methods.append(text)
            text = f"{_join(methods)} in {_tool_label(tool, version)} {cite(*_tool_refs(tool, version))}"
            if tool != "Nipype" and (any(map(_uses_nipype, group))
                                     or any(_wraps(n, tool) for n in nipype_calls)):
                text = f"{text.rstrip()} through {_tool_label('Nipype', nipype)} {cite('gorgolewski2011')}"
            parts.append(text.rstrip())
        return "; ".join(parts)


def _with(how: str) -> str:
    return f" ({how})" if how else ""


def _is_pbr28(tracer: str | None) -> bool:
    return bool(tracer) and "pbr28" in tracer.lower().replace("-", "").replace("[", "").replace("]", "")


# --------------------------------------------------------------------------- paragraphs

def _anat(r: _Records, cfg: Mapping[str, Any], cite: _Citations) -> str:
    s = []
    if r.has("bias correction"):
        s.append("The T1-weighted image was corrected for intensity non-uniformity"
                 + _with(r.how("bias correction", cite)) + ".")
    if r.has("brain extraction"):
        s.append("The brain was extracted" + _with(r.how("brain extraction", cite)) + ".")
    if r.has("tissue segmentation"):
        seg = "Grey matter, white matter and CSF were segmented" + _with(r.how("tissue segmentation", cite))
        if any("atropos" in _tokens(i) for i in r.interfaces("tissue segmentation")):
            seg += (f" with MNI152 2009 tissue priors (prior weight "
                    f"{_get(cfg, 'segmentation', 'prior_weight')})")
        s.append(seg + ".")
    if r.has("template normalization"):
        s.append(f"The T1-weighted image was normalised to the MNI152 2009 template at "
                 f"{_get(cfg, 'segmentation', 'template_resolution_mm'):g} mm with a "
                 f"{_get(cfg, 'segmentation', 'transform')} transform"
                 + _with(r.how("template normalization", cite)) + ".")
    return " ".join(s)


def _motion(r: _Records, cfg: Mapping[str, Any], cite: _Citations) -> str:
    if not r.has("frame realignment"):
        return ""
    st = _get(cfg, "motion", "start_time_s")
    md = _get(cfg, "motion", "min_frame_duration_s")
    ref = _get(cfg, "motion", "reference_start_s")
    fw = _get(cfg, "motion", "smoothing_fwhm_mm")
    rad = _get(cfg, "motion", "fd_radius_mm")
    return ("Head motion was corrected by rigid realignment" + _with(r.how("frame realignment", cite))
            + f" of every frame starting after {st:g} s and lasting at least {md:g} s to the "
            f"duration-weighted mean of the frames starting at or after {ref:g} s, images smoothed "
            f"with a {fw:g} mm FWHM Gaussian; earlier and shorter frames took the transform of the "
            "first registered frame. Framewise displacement was computed on a sphere of radius "
            f"{rad:g} mm {cite('power2012')}.")


def _coreg(r: _Records, cfg: Mapping[str, Any], cite: _Citations) -> str:
    if not r.has("PET-to-T1w registration"):
        return ""
    ns = _get(cfg, "registration", "n_starts")
    thr = _get(cfg, "registration", "flag_similarity_below")
    return ("The PET reference image was registered to the T1-weighted image with a rigid (6 degrees "
            "of freedom) transform maximising mutual information"
            + _with(r.how("PET-to-T1w registration", cite))
            + f", keeping the best of {ns} initialisations; registrations with a normalised mutual "
            f"information below {thr:g} were flagged.")


def _psf_fwhm(cfg: Mapping[str, Any], qc: Mapping[str, Any] | None) -> float | None:
    pvc_qc = ((qc or {}).get("labels_tacs") or {}).get("pvc") or {}
    fwhm = pvc_qc.get("psf_fwhm_mm")
    if fwhm is None:
        fwhm = _get(cfg, "tacs", "psf_fwhm_mm") or _get(cfg, "tacs", "default_psf_fwhm_mm")
    return float(fwhm) if fwhm is not None else None


def _regions(r: _Records, cfg: Mapping[str, Any], cite: _Citations, qc) -> str:
    s = ""
    if r.has("atlas to T1w") or r.has(STEP_LABELS_PET):
        s = f"Regions of the {_get(cfg, 'atlas', 'name')} atlas were brought from template space"
        if r.has("atlas to T1w"):
            s += " to the T1-weighted image through the inverse normalisation" + _with(r.how("atlas to T1w", cite))
        if r.has(STEP_LABELS_PET):
            s += " and to the PET grid through the PET-to-T1w transform" + _with(r.how(STEP_LABELS_PET, cite))
        s += "."
    if r.has(STEP_TACS):
        refs = _get(cfg, "atlas", "reference_regions") or []
        s += " Regional time-activity curves (Bq/mL) were extracted as regional means"
        s += f"; reference regions: {_join([str(x) for x in refs])}." if refs else "."
        pvc = r.interfaces(STEP_PVC, "gliaflow")
        fwhm = _psf_fwhm(cfg, qc)
        psf = f" with an isotropic Gaussian point-spread function of {fwhm:g} mm FWHM" if fwhm else ""
        if any(i.endswith("rbv_frames") for i in pvc):
            s += (" Partial-volume effects were corrected with region-based voxelwise correction "
                  f"(RBV) {cite('thomas2011')} built on the geometric transfer matrix "
                  f"{cite('rousset1998')}{psf}{_with(r.how(STEP_PVC, cite))}.")
        elif any(i.endswith("gtm_pvc") for i in pvc):
            s += (" Partial-volume effects were corrected with the geometric transfer matrix (GTM) "
                  f"method {cite('rousset1998')}{psf}{_with(r.how(STEP_PVC, cite))}.")
        else:
            s += " No partial-volume correction was applied."
    return s.strip()


def _model_of(interface: str) -> str | None:
    from gliaflow.pipeline.kinetics.regional import MODEL_INTERFACES

    return next((m for m, i in MODEL_INTERFACES.items() if i == interface), None)


def _blood(r: _Records, cfg: Mapping[str, Any], cite: _Citations) -> str:
    s = []
    if r.has(STEP_PLASMA):
        pf = next((m.group(1) for i in r.interfaces(STEP_PLASMA, "gliaflow")
                   if (m := re.search(r"fit_parent_fraction\(model='(\w+)'\)", i))), None)
        txt = "The arterial plasma input was derived from the blood recordings"
        if pf:
            txt += f"; the parent fraction was fitted with a {pf} model"
        else:
            txt += f" (parent fraction: {_get(cfg, 'blood', 'parent_fraction_model')})"
        s.append(txt + _with(r.how(STEP_PLASMA, cite)) + ".")
    if r.has(STEP_DELAY):
        s.append("The delay of the blood curves relative to the tissue was fitted to the early "
                 "whole-brain curve with a one-tissue model and blood volume, each candidate delay "
                 "solved by non-negative least squares" + _with(r.how(STEP_DELAY, cite)) + ".")
    return " ".join(s)


def _model_settings(models: set[str], cfg: Mapping[str, Any]) -> list[str]:
    """The settings that describe how the fitted models ran."""
    details = []
    if {"logan", "ma1"} & models:
        details.append(f"the linear phase of the graphical methods started at t* = "
                       f"{_get(cfg, 'kinetics', 'tstar_min'):g} min")
    if {"suv", "suvr"} & models:
        win = tuple(_get(cfg, "kinetics", "suvr_window_min"))
        details.append(f"SUV and SUVR used {float(win[0]):g}-{float(win[1]):g} min")
    if {"suvr", "srtm", "mrtm2"} & models:
        details.append(f"the reference region was {_get(cfg, 'kinetics', 'reference_region')}")
    if {"1tcm", "2tcm"} & models:
        vb = _get(cfg, "kinetics", "vb")
        details.append(f"the blood volume fraction was {'fitted' if vb is None else f'fixed at {vb:g}'}")
    if {"1tcm", "2tcm", "logan", "ma1", "srtm", "mrtm2"} & models:
        details.append(f"frames were weighted by {_get(cfg, 'kinetics', 'weights')}")
    return details


def _kinetics(r: _Records, cfg: Mapping[str, Any], cite: _Citations) -> str:
    s = []
    if r.has(STEP_KINETICS):
        models = [m for m in dict.fromkeys(_model_of(i) for i in r.interfaces(STEP_KINETICS, "gliaflow"))
                  if m in _MODEL_TEXT]
        texts = []
        for m in models:
            txt, keys = _MODEL_TEXT[m]
            texts.append(txt.format(**{k: cite(k) for k in keys}))
        txt = f"Regional outcome measures were {_join(texts)}"
        how = r.how(STEP_KINETICS, cite)
        txt += f", fitted with gliaflow's implementations ({how})" if how else ", computed by gliaflow"
        details = _model_settings(set(models), cfg)
        s.append(txt + (f"; {_join(details)}." if details else "."))
    if r.has(STEP_MAPS):
        maps = dict.fromkeys(m.group(1) for i in r.interfaces(STEP_MAPS, "gliaflow")
                             if (m := re.search(r"map='(\w+)'", i)))
        txt = f"Voxelwise parametric maps ({_join([_MAP_TEXT.get(m, m) for m in maps])}) were computed"
        if r.has("maps to template space"):
            txt += " and resampled to template space" + _with(r.how("maps to template space", cite))
        s.append(txt + ".")
    return " ".join(s)


_SCREENED_REGIONS = ("Regions that could not be tested (the same value in every subject, or fitted "
                     "exactly by the design) were left out; they are listed in the statistics summary.")
_SCREENED_VOXELS = ("Voxels that could not be tested (not finite in some subject's map, the same value "
                    "in every subject, or fitted exactly by the design) were left out of the analysis "
                    "mask; their numbers are in the statistics summary.")


def _group(r: _Records, cfg: Mapping[str, Any], cite: _Citations) -> str:
    st = dict(cfg.get("stats") or {})

    def g(key: str) -> Any:
        return st[key] if key in st else _get(cfg, "stats", key)

    s = []
    if r.has(STEP_GROUP_REGIONAL):
        cov = _join([str(c) for c in g("covariates") or []])
        txt = (f"Regional metrics were compared between {g('patient_label')}s and "
               f"{g('control_label')}s with a linear model adjusting for {cov or 'no covariates'}; "
               f"effect sizes are Hedges' g with 95% confidence intervals {cite('hedges1981')} and "
               f"p values were corrected across regions with the Benjamini-Hochberg false discovery "
               f"rate (q = {g('fdr_alpha')}) {cite('benjamini1995')}")
        if any("permutation_glm" in i for i in r.interfaces(STEP_GROUP_REGIONAL)):
            txt += (f", and by {g('n_permutations')} Freedman-Lane permutations {cite('winkler2014')}"
                    " for the family-wise error rate")
        s.append(txt + _with(r.how(STEP_GROUP_REGIONAL, cite)) + ".")
        if any(i.endswith("screen_columns") for i in r.interfaces(STEP_GROUP_REGIONAL)):
            s.append(_SCREENED_REGIONS)
    if r.has(STEP_GROUP_CORRELATION):
        groups = g("correlation_groups") or [g("patient_label")]
        s.append(f"Partial correlations of the regional metrics with {_join(g('clinical_scores') or [])} "
                 f"were computed within the {_join(groups)} group(s), controlling for the model "
                 "covariates" + _with(r.how(STEP_GROUP_CORRELATION, cite)) + ".")
    if r.has(STEP_GROUP_VOXELWISE):
        txt = (f"Voxelwise maps (smoothed {g('smoothing_fwhm_mm'):g} mm FWHM) were tested with "
               f"{g('n_permutations')} Freedman-Lane permutations {cite('winkler2014')}")
        if g("tfce"):
            txt += f" and threshold-free cluster enhancement {cite('smith2009')}"
        s.append(txt + ", controlling the family-wise error rate"
                 + _with(r.how(STEP_GROUP_VOXELWISE, cite)) + ".")
        if any(i.endswith("screen_columns") for i in r.interfaces(STEP_GROUP_VOXELWISE)):
            s.append(_SCREENED_VOXELS)
    return " ".join(s)


def _software(calls: list[ToolCall], cite: _Citations) -> str:
    tools = [(t, v) for t, v in software_used(calls) if t != "gliaflow"]
    if not tools:
        return ""
    items = [f"{_tool_label(t, v)} {cite(*_tool_refs(t, v))}".strip() for t, v in tools]
    return "Software that ran: " + "; ".join(items) + "."


def methods_text(provenance: Iterable[ToolCall | Mapping[str, Any]], config: Mapping[str, Any] | None = None,
                 tracer: str | None = None, qc: Mapping[str, Any] | None = None
                 ) -> tuple[list[str], list[str]]:
    """Methods paragraphs written from provenance records, and the reference keys they cite.

    Parameters
    ----------
    provenance : iterable of ToolCall (or their JSON dumps)
        What ran: a session's stage records, or a cohort's union with the group step's.
    config : dict, optional
        The effective configuration (``PipelineConfig.model_dump(mode="json")``): the settings
        that describe how the recorded steps ran (missing values: the defaults).
    tracer : str, optional
        Tracer name from the PET sidecar (TracerName).
    qc : dict, optional
        The session's QC values by stage; the PSF FWHM used for PVC is read from
        ``qc['labels_tacs']['pvc']['psf_fwhm_mm']`` when present.

    Returns
    -------
    (paragraphs, reference keys) : plain-text paragraphs with citation numbers ``[n]``, and the
    keys of :data:`REFERENCES` in citation order. No records: no paragraphs.
    """
    calls = merge_calls(as_calls(provenance))
    if not calls:
        return [], []
    cfg = dict(config or {})
    r = _Records(calls)
    cite = _Citations()
    gv = next((c.version for c in calls if c.tool == "gliaflow"), None)
    if gv is None:
        from gliaflow.pipeline import __version__ as gv
    tr = f" {tracer}" if tracer else ""
    paras = [f"The{tr} PET data were processed with gliaflow {gv}."]
    for part in (_anat(r, cfg, cite), _motion(r, cfg, cite), _coreg(r, cfg, cite),
                 _regions(r, cfg, cite, qc), _blood(r, cfg, cite), _kinetics(r, cfg, cite),
                 _group(r, cfg, cite)):
        if part:
            paras.append(part)
    if _is_pbr28(tracer):
        paras.append(f"TSPO quantification with [11C]PBR28 follows Albrecht et al. {cite('albrecht2019')}; "
                     "binding depends on the rs6971 genotype (HAB/MAB/LAB), which must be modelled "
                     "in group analyses.")
    sw = _software(calls, cite)
    if sw:
        paras.append(sw)
    return paras, cite.keys


def methods_html(paragraphs: list[str], cited: list[str]) -> str:
    """Paragraphs plus a numbered reference list, as HTML."""
    body = "".join(f"<p>{esc(p)}</p>" for p in paragraphs)
    refs = "".join(f"<li>{esc(REFERENCES[k])}</li>" for k in cited)
    return body + (f'<h3>References</h3><ol class="refs">{refs}</ol>' if refs else "")


def provenance_table(provenance: Iterable[ToolCall | Mapping[str, Any]]) -> pd.DataFrame:
    """The "What ran" table: one row per (step, tool, version, interface) with its count and
    (for command-line tools) the first command line; columns :data:`PROVENANCE_COLUMNS`."""
    rows = [c.model_dump() for c in merge_calls(as_calls(provenance))]
    df = pd.DataFrame(rows, columns=PROVENANCE_COLUMNS)
    df["command"] = df["command"].fillna("")
    return df
