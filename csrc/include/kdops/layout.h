// Layouts of the statistics a forward hands its backward and of the FGD feature pass' per-task scratch (one
// column per name, in this order), and feature_imitation's integer codes. Mirrored by kdops/_layout.py
// (tests/native/test_layout.py holds the two together); the Triton kernels take them as tl.constexpr from there.
#pragma once

namespace kdops {

namespace soft_ce {  // row_stats (rows, kStats) of soft_cross_entropy
enum Stat : int { kMaxS = 0, kLogSumS, kMaxT, kLogSumT, kLogSum1, kWeight, kStats };
}  // namespace soft_ce

namespace cwd {  // row_stats (N*C, kStats) of cwd_loss
enum Stat : int { kMaxS = 0, kLogSumS, kMaxT, kLogSumT, kNear, kShift, kStats };
}  // namespace cwd

namespace pkd {  // channel_stats (C, kStats) of pkd_loss
enum Stat : int { kMeanS = 0, kStdS, kMeanT, kStdT, kSquaredDiff, kStats };
}  // namespace pkd

namespace imitation {  // feature_imitation's integer codes of `loss` and `normalize`
enum Loss : int { kMSE = 0, kL1 = 1 };
enum Normalize : int { kBatch = 0, kMean = 1, kMask = 2 };
}  // namespace imitation

namespace ld {  // ld_loss's integer codes of `normalize` (its row_stats are cwd's)
enum Normalize : int { kSum = 0, kMean = 1, kWeight = 2 };
}  // namespace ld

namespace qfkd {  // quality_focal_kd's integer codes of `normalize`
enum Normalize : int { kSum = 0, kMean = 1, kWeight = 2 };
}  // namespace qfkd

namespace feature_pass {  // per (image, pixel block) task of fgd_feature_pass
// Per-channel partial sums: |S|, |T|, S - T, the M_fg- and M_bg-weighted squares, both partial contexts.
enum Partial : int { kAbsS = 0, kAbsT, kDiff, kFg, kBg, kCtxS, kCtxT, kPartials };
// The three online softmaxes, (max, sum) each: teacher pixel attention, student and teacher GcBlock logits.
enum Softmax : int { kAtt = 0, kGcS, kGcT, kSoftmaxes };
}  // namespace feature_pass

}  // namespace kdops
