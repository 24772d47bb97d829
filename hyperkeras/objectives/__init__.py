"""Objectives on generated weights.

- Regularisers of `hyperkeras.models.Hypernetwork`, in three roles (base.py: `LossTerm`, `AuxiliaryTrainer`,
  `UpdateRule`, each given a `StepInputs` per step): the loss terms `Entropy` (Deutsch's −Ĥ(S(θ)) + γ·G),
  `FunctionSpaceEntropy`, `OutlierEntropy` (high entropy on synthetic outliers) and `CKAEnergy` (hidden
  feature kernels repelled on probes); the auxiliary trainer
  `LatentGAN` (HyperGAN's adversarial term, with its own discriminator and optimizer); the update rule
  `SVGD` (particle training in weight or function space).
- The maths they use: `kozachenko_leonenko_entropy`, `gauge_penalty`, `gauge_transform`, `check_gauge`.
"""

from hyperkeras.objectives.base import (  # noqa: E402,F401
    AuxiliaryTrainer,
    LossTerm,
    Params,
    Regularizer,
    RegularizerTerms,
    StepInputs,
    UpdateRule,
    role_of,
)
from hyperkeras.objectives.entropy import kozachenko_leonenko_entropy  # noqa: E402,F401
from hyperkeras.objectives.entropy_regularizer import Entropy  # noqa: E402,F401
from hyperkeras.objectives.feature_kernel import CKAEnergy, cka_matrix, hyperspherical_energy  # noqa: E402,F401
from hyperkeras.objectives.function_space import (  # noqa: E402,F401
    SVGD,
    FunctionSpaceEntropy,
    rbf_kernel,
    svgd_direction,
)
from hyperkeras.objectives.gauge import check_gauge, gauge_penalty, gauge_transform  # noqa: E402,F401
from hyperkeras.objectives.latent_gan import LatentDiscriminator, LatentGAN  # noqa: E402,F401
from hyperkeras.objectives.outlier import OutlierEntropy, outlier_entropy  # noqa: E402,F401
