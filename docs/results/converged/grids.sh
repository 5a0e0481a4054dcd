# The study's grids, sourced by run_study.sh (which runs them) and summarize.sh (which joins the sweeps
# that split them): each list is written here once.
ESTIMATORS=ste,reste,approx_sign,sign_swish,ede,rbnn,dsq,fda  # the estimators sweep, in its order
LEADERS=ste,reste,approx_sign,dsq,fda                          # the leading group at 32 and 64 epochs
OTHERS=sign_swish,ede,rbnn                                     # ESTIMATORS less LEADERS
O_ENDS=1,1.5,2,3,5,10                                          # the o_end sweep
O_ENDS_OTHERS=1,1.5,2,5,10                                     # O_ENDS less 3, ReSTE's default (leaders' ReSTE)
O_ENDS_5SEEDS=2,3,5                                            # the o_end values with seeds 3 and 4
# the settings whose mean over seeds still rose 0.3 points or more over the last fifth at 128 epochs (3 seeds;
# 5 for STE and ApproxSign: docs/results/epochs128/summary.txt), trained for 256 (docs/results/epochs256);
# overridable, to run a part of them. ReSTE (o_end 3, flat at 128 epochs) is the control of both.
RISING=${RISING:-reste,sign_swish,ede,ste,dsq,approx_sign}     # the control, then the two far from flat
O_ENDS_RISING=${O_ENDS_RISING:-1,10}                           # ReSTE's o_end values (o_end 3: RISING's ReSTE)
# labels AXIS LIST: the sweep's setting labels, comma-separated ("labels o_end 2,3" -> o_end=2,o_end=3)
labels() {
  local IFS=, out=() v
  for v in $2; do out+=("$1=$v"); done
  echo "${out[*]}"
}
