"""The tests' statistical helpers: the public :mod:`gradnoise.testing` (Holm-corrected unbiasedness,
the exact-variance check, replayed noise), which plugins use too."""
from gradnoise.testing import (  # noqa: F401
    ALPHA, ROUNDING, bias_pvalues, check_unbiased, check_variance, estimates_and_truth, holm_reject, is_unbiased,
    log_variance_z, replay,
)
