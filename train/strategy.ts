// Training strategies as data: each resolves to a list of stages, and the loop (train/run.ts)
// walks that list without knowing which strategy it runs. EH-FT is "stage 1: PEFT + head at a
// high lr for 10% of the steps; restore the backbone; stage 2: everything at a low lr for the
// rest", not a code path of its own.
//
//   ft            main:   head + whole backbone (fresh head)
//   lp            main:   head only, backbone frozen
//   lpft          stage1: head only;              stage2: head + whole backbone
//   peft          main:   head + the PEFT method (the PEFT baseline)
//   ehft          stage1: head + the PEFT method; stage2: backbone restored to the pretrained
//                 tensors, PEFT dropped, head kept; head + whole backbone, fresh optimizer
//   ehft-reserve  as ehft, but the PEFT parameters stay (LoRA / prefix tensors, BitFit's biases)
//                 and keep training in stage 2

import type { PeftName } from "../peft/method.ts";

/** A training strategy; the table at the top of train/strategy.ts says what each trains. */
export type StrategyName = "ft" | "lp" | "lpft" | "peft" | "ehft" | "ehft-reserve";

export const STRATEGY_NAMES: readonly StrategyName[] = [
  "ft",
  "lp",
  "lpft",
  "peft",
  "ehft",
  "ehft-reserve",
];

/** A stage's name: "main" for single-stage strategies, "stage1" and "stage2" otherwise. */
export type StageName = "stage1" | "stage2" | "main";

/** What trains in a stage. The head always does. */
export interface StageTrains {
  /** The head trains in every stage. */
  head: true;
  /** "peft": the backbone tensors the PEFT method trains (BitFit's biases; none for LoRA). */
  backbone: "all" | "none" | "peft";
  /** The PEFT method's own tensors (and hooks) are in the model and train. */
  peft: boolean;
}

/** One stage of a strategy (`resolveStages`): steps, lr, what trains, the hand-off before it. */
export interface Stage {
  /** Which stage this is. */
  name: StageName;
  /** Optimizer steps of this stage. */
  steps: number;
  /** Peak learning rate of this stage's schedule. */
  lr: number;
  /** What trains in this stage. */
  trains: StageTrains;
  /**
   * The stage starts with a newly initialised head: the first stage of every strategy, unless
   * `--head` gives its head (the run then records false).
   */
  freshHead?: boolean;
  /**
   * Before the stage, the backbone is re-read from the pretrained checkpoint, bitwise. With
   * `dropPeft` every backbone tensor is; without it (ehft-reserve) the ones the PEFT method
   * trains keep their trained values, as the PEFT method's parameters do.
   */
  restoreBackbone?: boolean;
  /** Before the stage, the PEFT method's hooks and tensors are removed. */
  dropPeft?: boolean;
}

/** Whether the strategy uses a PEFT method (and so needs `--peft`). */
export function usesPeft(strategy: StrategyName): boolean {
  return strategy === "peft" || strategy === "ehft" || strategy === "ehft-reserve";
}

/** Whether the strategy has two stages (and so a stage-1 learning rate and ratio). */
export function isTwoStage(strategy: StrategyName): boolean {
  return strategy === "lpft" || strategy === "ehft" || strategy === "ehft-reserve";
}

/** Full fine-tuning's and Stage 2's learning rate (`--lr`), as the paper. */
export const FULL_FINETUNE_LR = 1e-5;

/**
 * The paper's learning rates of the head-with-PEFT phase by method (Stage 1 of ehft, the PEFT
 * baseline) and of linear probing (lp, Stage 1 of lpft). The official code probes at 1e-3.
 */
export const STAGE1_LR: Readonly<Record<PeftName | "lp", number>> = {
  bitfit: 5e-4,
  lora: 5e-4,
  prefix: 5e-3,
  lp: 5e-4,
};

/** The learning rate of the head-with-PEFT or head-only phase of `strategy`. */
export function defaultStage1Lr(strategy: StrategyName, peft: PeftName | null): number {
  if (strategy === "lp" || strategy === "lpft") return STAGE1_LR.lp;
  if (!usesPeft(strategy)) return FULL_FINETUNE_LR;
  if (peft === null) throw new Error(`strategy ${strategy} needs a PEFT method (--peft)`);
  return STAGE1_LR[peft];
}

/**
 * The learning rate a single-stage strategy trains at when `--lr` is not given: full FT's for
 * ft, the method's for peft, linear probing's for lp.
 */
export function defaultMainLr(strategy: StrategyName, peft: PeftName | null): number {
  if (strategy === "ft" || isTwoStage(strategy)) return FULL_FINETUNE_LR;
  return defaultStage1Lr(strategy, peft);
}

/** Steps of stage 1 when `total` steps are split by `ratio`: at least 1, leaving stage 2 ≥ 1. */
export function stage1Steps(total: number, ratio: number): number {
  if (!Number.isSafeInteger(total) || total < 2) {
    throw new Error(`a two-stage strategy needs at least 2 steps, got ${total}`);
  }
  if (!(ratio > 0 && ratio < 1)) throw new Error(`stage-1 ratio ${ratio} is not in (0, 1)`);
  return Math.min(total - 1, Math.max(1, Math.round(total * ratio)));
}

/** What `resolveStages` splits into stages: the strategy, its method, steps and learning rates. */
export interface StrategyBudget {
  /** The strategy to resolve. */
  strategy: StrategyName;
  /** The PEFT method; null exactly for strategies without one. */
  peft: PeftName | null;
  /** Optimizer steps of the whole run (all stages). */
  totalSteps: number;
  /** Two-stage strategies: stage 1's share of the steps. */
  stage1Ratio: number;
  /** Single-stage strategies: their lr; two-stage: stage 2's. */
  lr: number;
  /** Two-stage strategies: stage 1's lr. */
  stage1Lr: number;
}

/** The stages of a strategy for a budget. */
export function resolveStages(b: StrategyBudget): Stage[] {
  const { strategy, peft, totalSteps } = b;
  if (!Number.isSafeInteger(totalSteps) || totalSteps < 1) {
    throw new Error(`the budget must be at least 1 step, got ${totalSteps}`);
  }
  if (usesPeft(strategy) && peft === null) {
    throw new Error(`strategy ${strategy} needs a PEFT method (--peft)`);
  }
  if (!usesPeft(strategy) && peft !== null) {
    throw new Error(`strategy ${strategy} uses no PEFT method (got --peft ${peft})`);
  }
  const all: StageTrains = { head: true, backbone: "all", peft: false };
  switch (strategy) {
    case "ft":
      return [{ name: "main", steps: totalSteps, lr: b.lr, trains: all, freshHead: true }];
    case "lp":
      return [{
        name: "main",
        steps: totalSteps,
        lr: b.lr,
        trains: { head: true, backbone: "none", peft: false },
        freshHead: true,
      }];
    case "peft":
      return [{
        name: "main",
        steps: totalSteps,
        lr: b.lr,
        trains: { head: true, backbone: "peft", peft: true },
        freshHead: true,
      }];
  }
  const first = stage1Steps(totalSteps, b.stage1Ratio);
  const stage1: Stage = {
    name: "stage1",
    steps: first,
    lr: b.stage1Lr,
    trains: strategy === "lpft"
      ? { head: true, backbone: "none", peft: false }
      : { head: true, backbone: "peft", peft: true },
    freshHead: true,
  };
  const stage2: Stage = {
    name: "stage2",
    steps: totalSteps - first,
    lr: b.lr,
    trains: { ...all, peft: strategy === "ehft-reserve" },
  };
  if (strategy === "ehft") Object.assign(stage2, { restoreBackbone: true, dropPeft: true });
  if (strategy === "ehft-reserve") stage2.restoreBackbone = true;
  return [stage1, stage2];
}
