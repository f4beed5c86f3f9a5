"""Every built-in merge method: its name, paper, parameters and the module holding its code.

One table to read to know what ``--method`` accepts and what each method takes.
The code of a method lives in the module its ``impl`` names and is imported only
when the method runs (this file stays torch-free so the CLI's help is quick).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import field_validator

from ..plan.options import Granularity, MethodParams, option
from .registry import MethodInfo, declare_method

GRASP_PAPER = "https://arxiv.org/abs/2606.14900"
TASK_ARITHMETIC_PAPER = "https://arxiv.org/abs/2212.04089"
TIES_PAPER = "https://arxiv.org/abs/2306.01708"
FISHER_PAPER = "https://arxiv.org/abs/2111.09832"
OPCM_PAPER = "https://arxiv.org/abs/2501.09522"
SOUPS_PAPER = "https://arxiv.org/abs/2203.05482"
ADAMERGING_PAPER = "https://arxiv.org/abs/2310.02575"



#: the method the README recommends, with the options it is recommended with: the best single model on the committed
#: digits-eras bench (docs/benchmark.md). The demo and the Space run it by default, GRASP always beside it.
RECOMMENDED_METHOD = "soup-wise"
RECOMMENDED_OPTIONS: dict = {}


# --------------------------------------------------------------------------- parameters


class GraspParams(MethodParams):
    """GRASP's own parameters (DESIGN.md §1): the gate and what it scores."""

    # ±inf are meaningful (transfer everything / nothing); NaN is not
    tau: float = option(0.3, "Alignment threshold: a unit is transferred when its gradient cosine is strictly "
                        "above tau.", card="Threshold τ = {value:g}: a unit moves from the source into the merged "
                        "model when its alignment is > τ.", allow_inf_nan=True)
    granularity: Granularity = option(
        "tensor", "Unit that gets one score: a whole parameter tensor, an output row, or an element.",
        card={"tensor": "Granularity of a \"parameter\": **tensor** — one score per named parameter tensor, as in "
                        "the authors' released code.",
              "row": "Granularity of a \"parameter\": **row** — one score per output channel / row of a weight; bias "
                     "entries follow their row.",
              "element": "Granularity of a \"parameter\": **element** — one score per scalar (sign agreement of the "
                         "two gradients)."})
    align_batches: int = option(1, "Number of target-train batches whose summed gradients are compared.",
                                card="Alignment data: {value} batch(es) of target training images (never validation "
                                "or test), their gradients summed.", ge=1)
    buffers: Literal["keep", "follow"] = option(
        "keep", "BatchNorm running statistics: 'keep' the merged model's (released code), or 'follow' the "
        "module's transferred weight.",
        card={"keep": "Buffers (BatchNorm running statistics): never transferred, as in the released code; they come "
                      "from the initial model and fine-tuning.",
              "follow": "Buffers (BatchNorm running statistics): a module's buffers follow its transferred weight."})

    @field_validator("tau")
    @classmethod
    def _tau_is_a_number(cls, value: float) -> float:
        if math.isnan(value):
            raise ValueError("tau must be a number, not NaN")
        return value


class TaskArithmeticParams(MethodParams):
    # FusionBench's default (scaling_factor: 0.3), in the range "Editing models with task arithmetic" tunes over
    scaling: float = option(0.3, "Task-vector scaling λ.", card="Task-vector scaling λ = {value:g}.")


class TiesParams(MethodParams):
    # λ 1.0 is the TIES paper's default (FusionBench's config uses 0.3); density 0.2 its top-20% trim
    scaling: float = option(1.0, "Task-vector scaling λ.", card="Task-vector scaling λ = {value:g}.")
    density: float = option(0.2, "TIES: fraction of each task vector's entries kept by magnitude.",
                            card="Density {value:g}: the fraction of each task vector's entries kept, by magnitude.",
                            gt=0, le=1)


class FisherParams(MethodParams):
    # FusionBench's num_fisher_examples: GRASP's one alignment batch is too few for a Fisher estimate
    fisher_examples: int = option(256, "Fisher merging: target-train examples for each source's diagonal Fisher.",
                                  card="Each source's diagonal Fisher information estimated on {value} target "
                                  "training examples.", ge=1)


class OpcmParams(MethodParams):
    # FusionBench's alpha
    opcm_alpha: float = option(0.5, "OPCM: fraction of the singular-value energy whose subspace a new task vector "
                               "is projected away from.", card="α = {value:g}: the fraction of the singular-value "
                               "energy whose subspace a new task vector is projected away from.", ge=0, le=1)


class PearlParams(MethodParams):
    # the paper's PEARL settings
    pearl_rank: int = option(16, "PEARL: rank of each source's LoRA adapter.",
                             card="Each source's LoRA adapter has rank {value}.", ge=1)
    pearl_lr: float = option(1e-3, "PEARL: learning rate of the adapters and composition weights (not --lr).",
                             card="The adapters and composition weights trained at learning rate {value:g}.", gt=0)


class InterpolationParams(GraspParams):
    """GRASP's gate parameters (α starts at the gate) and the α training's own."""

    interp_epochs: int = option(3, "Learned interpolation: epochs over target train learning α (0: α stays at "
                                "GRASP's gate, which is then GRASP exactly).",
                                card="The coefficients α learned over {value} epoch(s) of target train (0: α stays "
                                "at the gate).", ge=0)
    interp_lr: float = option(0.05, "Learned interpolation: AdamW learning rate of the coefficients α in [0, 1].",
                              card="The coefficients α learned at learning rate {value:g} (AdamW).", gt=0)


class SequentialTaParams(MethodParams):
    # λ = 0 first: a source that does not help on validation is left out; ties go to the smaller λ
    ta_grid: tuple[float, ...] = option((0.0, 0.2, 0.4, 0.6, 0.8, 1.0), "Sequential task arithmetic: the λ values "
                                        "tried for each source (comma-separated on the command line).",
                                        card="The λ values tried for each source: {value}.", min_length=1)

    @field_validator("ta_grid", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        return tuple(float(v) for v in value.split(",") if v.strip()) if isinstance(value, str) else value


SELECT_CARD = {"validation": "Sources and soup judged on target validation.",
               "train+validation": "Sources and soup judged on target train and validation together (before any "
                                   "training on the target)."}


class SoupWiseParams(MethodParams):
    # train+validation: on the bench it beat validation alone (92.5 vs 92.2, docs/benchmark.md)
    soup_select: Literal["validation", "train+validation"] = option(
        "train+validation", "Soup-wise: the target examples the sources and the soup are judged on (train is "
        "unseen by the sources until fine-tuning: twice the examples of validation alone).", card=SELECT_CARD)


class DistillParams(MethodParams):
    # 0.5: the label keeps the largest share of every target, the ensemble shapes the rest (see methods/distill.py)
    distill_weight: float = option(0.5, "Distill: the ensemble's share w of each training target, (1 - w) * label + "
                                   "w * ensemble probabilities.", card="Each training target is (1 − {value:g}) × the "
                                   "label + {value:g} × the sources' ensemble probabilities.", ge=0, le=1)
    distill_start: Literal["greedy-soup", "best-source"] = option(
        "greedy-soup", "Distill: the model that is fine-tuned, the greedy soup of the sources or the best one alone.",
        card={"greedy-soup": "The model fine-tuned on those targets starts as the sources' greedy soup.",
              "best-source": "The model fine-tuned on those targets starts as the best source on validation."})
    distill_select: Literal["validation", "train+validation"] = option(
        "validation", "Distill: the target examples the sources and the soup are judged on (train is unseen by "
        "the sources until fine-tuning: twice the examples, less selection noise).", card=SELECT_CARD)
    distill_wise: bool = option(False, "Distill: after fine-tuning, interpolate between the start and the "
                                "fine-tuned weights (WiSE-FT), α in {0, .25, .5, .75, 1} chosen on validation.",
                                card={True: "After fine-tuning, the weights are interpolated between the start and "
                                            "the fine-tuned model (WiSE-FT), α chosen on validation.",
                                      False: "The fine-tuned weights are kept as they are (no interpolation back "
                                             "towards the start)."})


# --------------------------------------------------------------------------- methods

_GRASP_HOW = ("merges the sources one at a time, so only the merged model and one source are ever in memory. For "
              "each source it takes, on the same batches of target *training* data, the gradient of the loss with "
              "respect to every parameter of the merged model and of the source, and copies a parameter from the "
              "source into the merged model only where the cosine of the two gradients is strictly greater than "
              "the threshold τ; the merged model is then fine-tuned on the target training data, keeping its best "
              "state by validation accuracy.")

for _info in (
    MethodInfo("grasp", "GRASP (Gradient-Aligned Sequential Parameter Transfer)", "GRASP", _GRASP_HOW,
               GraspParams, GRASP_PAPER, sequential=True, multi_process=True, impl="hf_grasp.methods.grasp:grasp"),
    MethodInfo("no-align", "GRASP without alignment (every tensor transferred)", "GRASP no-align",
               "is GRASP's ablation without the gate: every tensor of every source is transferred (τ = −∞), with "
               "the same fine-tuning.", GraspParams, GRASP_PAPER, sequential=True, multi_process=True,
               impl="hf_grasp.methods.ablations:no_align"),
    MethodInfo("no-finetune", "GRASP without Stage 5 fine-tuning", "GRASP no-finetune",
               "is GRASP's ablation without the fine-tuning after each transfer (the initial fine-tune stays).",
               GraspParams, GRASP_PAPER, sequential=True, multi_process=True,
               impl="hf_grasp.methods.ablations:no_finetune"),
    MethodInfo("finetune-only", "Fine-tune the first source only (no transfer)", "Fine-tune only",
               "fine-tunes the first source on the target for GRASP's whole epoch budget; no other source is used.",
               multi_process=True, impl="hf_grasp.methods.ablations:finetune_only"),
    MethodInfo("scratch", "Random init trained on the target alone", "Scratch",
               "trains a randomly initialised model of the architecture on the target for GRASP's epoch budget.",
               multi_process=True, impl="hf_grasp.methods.ablations:scratch"),
    MethodInfo("ensemble", "Ensemble (uniform average of the sources' predicted probabilities)", "Ensemble",
               "averages the sources' softmax probabilities uniformly; nothing is trained or merged, so the result "
               "is a predictor of K models, not one model.", parameter_space=False, multi_process=True,
               impl="hf_grasp.methods.ensemble:ensemble"),
    MethodInfo("multi-source", "Multi-Source (uniform parameter average, then fine-tuning)", "Multi-Source",
               "averages the sources' parameters and buffers uniformly (a streamed running mean), then fine-tunes "
               "the average for GRASP's epoch budget.", paper=GRASP_PAPER, multi_process=True,
               impl="hf_grasp.methods.multi_source:multi_source"),
    MethodInfo("multi-source-naive", "Multi-Source, naive (all K sources resident; memory comparison only)",
               "Multi-Source naive", "computes the Multi-Source average holding all K sources at once (for the "
               "memory comparison only).", paper=GRASP_PAPER, multi_process=True,
               impl="hf_grasp.methods.multi_source:multi_source_naive"),
    MethodInfo("task-arithmetic", "Task Arithmetic (Ilharco et al., 2023)", "Task Arithmetic",
               "adds the scaled sum of the sources' task vectors (source − base) to the base, tensor by tensor; "
               "no training.", TaskArithmeticParams, TASK_ARITHMETIC_PAPER, needs_base=True,
               reads_across_sources=True, multi_process=True, extra="peft",
               impl="hf_grasp.methods.task_arithmetic:task_arithmetic"),
    MethodInfo("ties", "TIES-Merging (Yadav et al., 2023)", "TIES",
               "trims each task vector (source − base) to its largest entries, elects a sign per entry by total "
               "mass, averages the entries that agree with it and adds the scaled result to the base; no training.",
               TiesParams, TIES_PAPER, needs_base=True, reads_across_sources=True, multi_process=True, extra="peft",
               impl="hf_grasp.methods.task_arithmetic:ties"),
    MethodInfo("fisher", "Fisher Merging (Matena & Raffel, 2022)", "Fisher",
               "averages the sources' parameters weighted by each source's diagonal Fisher information estimated "
               "on target training images; no training.", FisherParams, FISHER_PAPER, multi_process=True,
               impl="hf_grasp.methods.fisher:fisher"),
    MethodInfo("opcm", "OPCM: Merging Models on the Fly Without Retraining (Tang et al., 2025)", "OPCM",
               "adds the sources' task vectors one at a time, each projected away from the principal singular "
               "subspace of the merged task vector so far, then rescales; data-free, no training.", OpcmParams,
               OPCM_PAPER, needs_base=True, multi_process=True, impl="hf_grasp.methods.opcm:opcm"),
    MethodInfo("pearl", "PEARL-style per-source low-rank adapters composed with learned weights", "PEARL",
               "gives each source a low-rank (LoRA) adapter initialised from its task vector, trains the adapters "
               "and one composition weight per source on the target, then merges them into the weights.",
               PearlParams, multi_process=False, extra="peft", impl="hf_grasp.methods.pearl:pearl"),
    MethodInfo("greedy-soup", "Greedy soup (Wortsman et al., 2022), streamed", "Greedy soup",
               "judges each source alone on target validation (BatchNorm re-estimated on target train), then, best "
               "first, adds each source to a uniform parameter average only if validation accuracy does not drop; "
               "the soup is then fine-tuned.", paper=SOUPS_PAPER, multi_process=False,
               impl="hf_grasp.methods.soup:greedy_soup"),
    MethodInfo("best-source", "Best single source (chosen on target validation), fine-tuned", "Best source",
               "judges each source alone on target validation (BatchNorm re-estimated on target train), keeps the "
               "best one and fine-tunes it; no other source is used.", multi_process=False,
               impl="hf_grasp.methods.best_source:best_source"),
    MethodInfo("soup-wise", "Greedy soup judged on target train and validation, fine-tuned, interpolated back "
               "(WiSE-FT)", "Soup-wise",
               "judges each source alone on target train and validation (BatchNorm re-estimated on target train), "
               "builds the greedy soup of those that do not lower that accuracy, fine-tunes it, then keeps the "
               "interpolation start + α (fine-tuned − start), α in {0, ¼, ½, ¾, 1}, that scores best on "
               "validation; one source in memory at a time.", SoupWiseParams, SOUPS_PAPER, multi_process=False,
               impl="hf_grasp.methods.soup_wise:soup_wise"),
    MethodInfo("distill", "Greedy soup distilled from the sources' streamed ensemble", "Distill",
               "judges each source on target validation (BatchNorm re-estimated on target train) and adds its "
               "predicted probabilities on every target-train image to a running sum, builds the greedy soup, then "
               "fine-tunes it on targets mixing each label with the ensemble's probabilities; one source in memory "
               "at a time.", DistillParams, multi_process=False, impl="hf_grasp.methods.distill:distill"),
    MethodInfo("sequential-ta", "Sequential task arithmetic (λ per source chosen on validation)", "Sequential TA",
               "starts from --base and adds each source's task vector (source − base) scaled by the λ of a small "
               "grid that scores best on target validation (λ = 0 leaves the source out); then fine-tunes.",
               SequentialTaParams, TASK_ARITHMETIC_PAPER, needs_base=True, multi_process=False,
               impl="hf_grasp.methods.sequential_ta:sequential_ta"),
    MethodInfo("learned-interpolation", "Learned interpolation (AdaMerging-style, sequential and supervised)",
               "Learned interpolation",
               "runs GRASP's steps, but instead of copying a tensor where its alignment score is above τ it learns a "
               "coefficient α in [0, 1] per tensor between the merged model and the source on target training data, "
               "starting at GRASP's gate and kept only if validation improves; each step then fine-tunes.",
               InterpolationParams, ADAMERGING_PAPER, sequential=True, multi_process=False,
               impl="hf_grasp.methods.interpolation:learned_interpolation"),
):
    declare_method(_info)
