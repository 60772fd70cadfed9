/**
 * ehft: fine-tune pretrained text encoders with EH-FT ("Efficient Head Finetuning"), every tensor
 * operation a hand-written WGSL kernel on WebGPU.
 *
 * This module is the public API. It is meant to be imported by URL:
 *
 * ```ts
 * import { getGpu, openSafetensors } from "https://<host>/<path>/mod.ts";
 * ```
 *
 * @module
 */

// The GPU runtime.
export {
  DeviceLostError,
  getGpu,
  Gpu,
  GpuError,
  NoAdapterError,
  OPTIONAL_FEATURES,
  requestGpu,
  type RequestGpuOptions,
} from "./kernels/device.ts";
export {
  createTensor,
  type DType,
  DTYPE_BYTES,
  type HostArray,
  Tensor,
  tensorFromArray,
} from "./kernels/tensor.ts";
export { type Binding, Recorder, type Uniforms } from "./kernels/recorder.ts";
export {
  type ArenaSpec,
  createArena,
  slotAlignment,
  slotRuns,
  spanOf,
  TensorArena,
} from "./kernels/arena.ts";
export { getPipeline } from "./kernels/pipeline.ts";
export {
  type ElementwiseKernel,
  elementwiseKernel,
  recordElementwise,
} from "./kernels/elementwise.ts";
export { flatIndex, grid1d } from "./kernels/grid.ts";
export { fill } from "./kernels/fill.ts";

// The kernel core: one file per operation, forward and backward side by side.
export {
  F16_MATH_VARIANTS,
  type F16MathVariant,
  isF16MathVariant,
  type KernelVariant,
  matmul,
  type MatmulArgs,
  type MatmulBatch,
  type MatmulEpilogue,
  type MatmulVariant,
  NN_KERNELS,
} from "./kernels/matmul.ts";
export {
  linearBackward,
  type LinearBackwardArgs,
  linearForward,
  type LinearForwardArgs,
} from "./kernels/linear.ts";
export {
  loraBackward,
  type LoraBackwardArgs,
  loraForward,
  type LoraForwardArgs,
} from "./kernels/lora.ts";
export { THIN_MAX_N, thinMatmul, type ThinMatmulArgs } from "./kernels/thin_matmul.ts";
export { transpose, type TransposeArgs } from "./kernels/transpose.ts";
export { layerNormBackward, layerNormForward } from "./kernels/layernorm.ts";
export { addLayerNormBackward, addLayerNormForward } from "./kernels/add_layernorm.ts";
export { GELU_WGSL, geluBackward, geluForward } from "./kernels/gelu.ts";
export { castF16ToF32, castF32ToF16 } from "./kernels/cast.ts";
export { F16_MAX, TO_F16_WGSL } from "./kernels/f16.ts";
export { reluBackward, reluForward } from "./kernels/relu.ts";
export { add, addInPlace, scale } from "./kernels/add.ts";
export {
  DROPOUT_WGSL,
  dropoutBackward,
  type DropoutConfig,
  dropoutForward,
  dropoutKeep,
} from "./kernels/dropout.ts";
export {
  ATTENTION_MAX_HEAD_DIM,
  attentionBackward,
  attentionForward,
} from "./kernels/attention.ts";
export {
  FLASH_ATTENTION_MAX_HEAD_DIM,
  flashAttentionBackward,
  flashAttentionForward,
  flashAttentionStatsShape,
  type FlashAttentionTiling,
  flashAttentionTiling,
} from "./kernels/flash_attention.ts";
export {
  buildEmbeddingPlan,
  createEmbeddingPlanTensors,
  embeddingBackward,
  type EmbeddingBackwardArgs,
  embeddingForward,
  type EmbeddingForwardArgs,
  type EmbeddingPlan,
  EmbeddingPlanTensors,
} from "./kernels/embedding.ts";
export {
  softmaxCrossEntropyBackward,
  softmaxCrossEntropyForward,
} from "./kernels/softmax_cross_entropy.ts";
export { bceWithLogitsBackward, bceWithLogitsForward } from "./kernels/bce_with_logits.ts";
export { mseBackward, mseForward } from "./kernels/mse.ts";
export {
  vocabCrossEntropyBackward,
  vocabCrossEntropyForward,
  type VocabCrossEntropyState,
} from "./kernels/vocab_cross_entropy.ts";
export {
  gatherRowsBackward,
  gatherRowsForward,
  NOT_SELECTED,
  selectionSlots,
} from "./kernels/gather_rows.ts";
export {
  type AdamwHyper,
  adamwStep,
  adamwStepGroup,
  biasCorrectionTable,
} from "./kernels/adamw.ts";
export { gradNormClip, gradNormPartialsLength, LOSS_SCALED_NORM } from "./kernels/grad_norm.ts";
export {
  createLossScaleState,
  LOSS_SCALE_DEFAULTS,
  LOSS_SCALE_STATE,
  type LossScaleSettings,
  type LossScaleValues,
  type LossScaling,
  scaleByLossScale,
} from "./kernels/loss_scale.ts";
export { rowNorms } from "./kernels/row_norm.ts";
export { distance, distancePartialsLength, rowDistances } from "./kernels/distance.ts";
// The head's input: the first token's state, or WiC's pooled word spans.
export {
  firstTokenBackward,
  firstTokenForward,
  wicPoolBackward,
  wicPoolForward,
} from "./kernels/pooling.ts";

// Checkpoint files.
export {
  type Dtype as SafetensorsDtype,
  type LoadedTensor,
  openSafetensors,
  SafetensorsError,
  type SafetensorsReader,
  type TensorData,
  type TensorInfo,
  type TensorInput,
  writeSafetensors,
} from "./model/safetensors.ts";

// Models: config, hub downloads, tokenizers, the encoder and the EH-FT head, checkpoints.
export {
  ConfigError,
  maxSequenceLength,
  type ModelConfig,
  type ModelType,
  parseConfig,
  readConfig,
} from "./model/config.ts";
export {
  type DownloadProgress,
  hubCacheDir,
  type HubEnv,
  HubError,
  resolveModel,
  type ResolveModelOptions,
} from "./model/hub.ts";
export {
  type EncodedBatch,
  type EncodeOptions,
  loadTokenizer,
  placeSpan,
  type Span,
  type TextInput,
  TextTokenizer,
  TokenizerError,
  type TokenizerModelInfo,
  type TokenizerOptions,
  type Truncation,
  TruncationError,
} from "./model/tokenizer.ts";
export {
  type AddedTokenJson,
  type ByteLevelBpeOptions,
  convertByteLevelBpe,
  convertTokenizerDir,
  convertWordPiece,
  TokenizerConvertError,
  type TokenizerJson,
  type WordPieceOptions,
} from "./model/tokenizer_convert.ts";
export {
  type AttentionKernels,
  type AttentionPrefix,
  type BackwardOptions,
  chooseAttention,
  createEncoder,
  type EmbeddingParams,
  Encoder,
  type EncoderBatch,
  encoderGradients,
  type EncoderGrads,
  type EncoderHooks,
  type EncoderOptions,
  encoderParameters,
  encoderParameterShapes,
  type EncoderParams,
  FLASH_ATTENTION_ABOVE_BYTES,
  type ForwardOptions,
  type HookContext,
  type LayerParams,
  LINEAR_MODULES,
  type LinearHook,
  type LinearModule,
  type LinearSite,
  type Precision,
  type WeightBias,
} from "./model/encoder.ts";
export {
  createHead,
  Head,
  HEAD_INIT_STD,
  HEAD_WIDTH,
  headGradients,
  type HeadOptions,
  headParameters,
  type HeadParams,
} from "./model/head.ts";
export {
  CheckpointError,
  findWeightsFile,
  type HeadShape,
  loadBackbone,
  loadHead,
  openWeights,
  readHeadShape,
  saveModel,
  type SaveModelOptions,
  type TensorShapes,
} from "./model/checkpoint.ts";
export { type OpenedModel, openModel, type OpenModelOptions } from "./model/load.ts";
export {
  initialMlmHeadValues,
  MlmHead,
  mlmHeadNames,
  type MlmHeadParams,
  mlmHeadShapes,
} from "./model/mlm_head.ts";
export { initialEncoderValues, normalGenerator, uniformGenerator } from "./model/init.ts";
export { writeFileAtomic, writeJsonAtomic } from "./model/atomic_write.ts";

// Parameter-efficient methods: each injects itself into an encoder and removes itself.
export {
  createPeft,
  PEFT_DEFAULTS,
  PEFT_NAMES,
  type PeftMethod,
  type PeftName,
  type PeftOptions,
} from "./peft/method.ts";
export { type LoraAdapterOptions, mergeLora, saveLoraAdapter } from "./peft/lora.ts";

// Training: strategies, the run, tasks and metrics.
export {
  paperRecipe,
  type ParsedTrainArgs,
  parseTrainArgs,
  type Recipe,
  type RunSettings,
  type TrainConfig,
} from "./train/config.ts";
export { FlagError, type TuneFlags } from "./train/flags.ts";
export { learningRate, type Schedule, type ScheduleName, warmupSteps } from "./train/schedule.ts";
export { type RunMetrics, type RunOptions, runTraining, type SeedsMetrics } from "./train/run.ts";
// What runTraining throws when a run stops on a fault (a non-finite loss, a lost device, a write
// that failed): the run is kept, and its message says how to resume it.
export { RunFaultError } from "./train/run_faults.ts";
export { type MetricValues, NonFiniteOutputsError } from "./train/evaluate.ts";
export { type StepStats, Trainer, type TrainerOptions } from "./train/trainer.ts";
export {
  assembleBatch,
  type TokenizedExample,
  type TokenizedInput,
  type TokenizedSplit,
  tokenizeExamples,
  type TokenSpans,
  type TrainBatch,
} from "./train/batches.ts";
export {
  type AdamW,
  ADAMW_DEFAULTS,
  type AdamwSettings,
  type TrainableTensor,
} from "./train/optimizer.ts";
// The GEMM autotune a run takes (RunOptions.autotune): tuneRequest() reads the CLIs' settings.
export { type TuneRequest, tuneRequest } from "./kernels/matmul_autotune.ts";
// The nine tasks (readers, heads, metrics) by name, and predictions from a fine-tuned model.
export { taskByName, TASKS } from "./tasks/all.ts";
export { predict, type Prediction, type PredictOptions } from "./predict.ts";
export {
  resolveStages,
  type Stage,
  type StageName,
  type StageTrains,
  type StrategyBudget,
  type StrategyName,
} from "./train/strategy.ts";

// Masked-language-model pretraining: corpus, vocabulary, masking, the loop.
export {
  type CorpusDocument,
  CorpusError,
  fetchBrownCorpus,
  type FetchBrownOptions,
  readTextCorpus,
  splitHeldOut,
  type TaskText,
  taskTrainDocuments,
} from "./train/corpus.ts";
export {
  prunedTokenizerJson,
  type PrunedVocabulary,
  type PruneOptions,
  pruneVocabulary,
  VocabPruneError,
  vocabTxt,
} from "./train/vocab_prune.ts";
export {
  batchIndices,
  maskBatch,
  type MaskingIds,
  type MlmBatch,
  packDocuments,
} from "./train/mlm_data.ts";
export {
  pretrain,
  PRETRAIN_ADAMW,
  Pretrainer,
  type PretrainOptions,
  type PretrainResult,
  saveMlmModel,
  type StepStats as PretrainStepStats,
} from "./train/pretrain.ts";
export { DEFAULT_MODEL_NAME, miniRecipe, shippedModelDir } from "./train/default_model.ts";
export {
  badLabel,
  headFeatures,
  type HeadInput,
  labelClasses,
  type LossKind,
  type Task,
  taskDefinitionProblem,
  type TaskExample,
} from "./train/task.ts";
// For a task of one's own: the readers the nine use, with their one-line errors naming file and
// line (a split's file that is not there must be a MissingDataError: --dry-run reports it).
export {
  DataError,
  indexField,
  integerField,
  labelId,
  MissingDataError,
  readJsonl,
  readTsv,
  splitFile,
  stringField,
  tsvColumn,
  tsvIndex,
  type TsvRow,
  type TsvTable,
} from "./train/data_files.ts";
// A task script of one's own, as tasks/*.ts are: the flags of train.ts over a recipe.
export { runTaskScript, trainFromArgs } from "./train.ts";
export type { DryRunReport, DryRunSplit } from "./train/dry_run.ts";
export {
  DatasetError,
  DatasetNotCachedError,
  type DatasetProgress,
  type EnsureDatasetOptions,
} from "./train/data_download.ts";
export {
  accuracy,
  computeMetrics,
  f1,
  macro_f1,
  mcc,
  type MetricName,
  pearson,
  spearman,
} from "./train/metrics.ts";
