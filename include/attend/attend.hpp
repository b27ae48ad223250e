// attend: CPU attention kernels, header-only. Include this for everything but the Eigen
// adapter (attend/eigen.hpp), or include the one header you need.
//
//   view.hpp       MatrixView, TensorView, Span: non-owning views of your buffers
//   options.hpp    ScoreOptions, AttentionOptions: masks, bias, ALiBi, softcap, sinks
//   linear.hpp     linear, project_heads, project_qkv, project_output
//   packed.hpp     PackedWeight: a weight of linear() packed once, reused by every call
//   scores.hpp     scores: S = scale * Q K^T
//   softmax.hpp    softmax: plain and masked, in place or not, with log-sum-exp
//   merge.hpp      merge_values: O = P V
//   attention.hpp  attention: all of the above for every batch and head in one call;
//                  attention_with_probs: the same, returning the probabilities too
//   mha.hpp        multihead_attention: projections, attention and output projection
//   varlen.hpp     attention_varlen: packed sequences of different lengths, no padding
//   kv_cache.hpp   KvCache, PagedKvCache and append: the keys and values of past tokens
//   decode.hpp     decode_attention: new tokens against a cache, GQA-packed, split-KV
//   partials.hpp   merge_partials: attention over disjoint key sets merged by log-sum-exp
//   isa.hpp        the instruction-set paths and their choice at run time
//   context.hpp    Context (path, executor), ThreadPool and the Executor interface
#pragma once

#define ATTEND_VERSION_MAJOR 0
#define ATTEND_VERSION_MINOR 1
#define ATTEND_VERSION_PATCH 0

#include "attend/attention.hpp"
#include "attend/context.hpp"
#include "attend/decode.hpp"
#include "attend/isa.hpp"
#include "attend/kv_cache.hpp"
#include "attend/linear.hpp"
#include "attend/merge.hpp"
#include "attend/mha.hpp"
#include "attend/options.hpp"
#include "attend/packed.hpp"
#include "attend/partials.hpp"
#include "attend/scores.hpp"
#include "attend/softmax.hpp"
#include "attend/varlen.hpp"
#include "attend/view.hpp"
