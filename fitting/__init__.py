"""fitting: gradient-based shape retrieval on top of diffscat (losses, parametrisations, fits)."""

from ._auto import (
    CANDIDATES as CANDIDATES,
    DELTA_SIGN_TOL as DELTA_SIGN_TOL,
    bin_pattern as bin_pattern,
    data_loss as data_loss,
    fit_auto as fit_auto,
    fit_oriented as fit_oriented,
    keep_delta_sign as keep_delta_sign,
    n_parameters as n_parameters,
    orientation_search as orientation_search,
    prune_classes as prune_classes,
)
from ._batch import (
    STATUS as STATUS,
    ArraySource as ArraySource,
    BatchSummary as BatchSummary,
    batch_fit as batch_fit,
    merge_parts as merge_parts,
    read_results as read_results,
)
from ._batch_auto import (
    AutoBatchFitter as AutoBatchFitter,
    noise_consistency as noise_consistency,
)
from ._batch_fitters import (
    EllipsoidBatchFitter as EllipsoidBatchFitter,
    SphereBatchFitter as SphereBatchFitter,
)
from ._evalset import (
    POLYHEDRA as POLYHEDRA,
    EvalPattern as EvalPattern,
    EvaluationSet as EvaluationSet,
    evaluation_set as evaluation_set,
    random_harmonics_coefficients as random_harmonics_coefficients,
    simulate_reference as simulate_reference,
)
from ._fit import (
    GRID_LADDER as GRID_LADDER,
    POLARISATIONS as POLARISATIONS,
    expected_signal as expected_signal,
    fit as fit,
    fit_batch as fit_batch,
    ladder_grid as ladder_grid,
    make_optimizer as make_optimizer,
)
from ._init import (
    ESCAPE_ROUTES as ESCAPE_ROUTES,
    HARMONIC_ROUTES as HARMONIC_ROUTES,
    SH_ROUTE as SH_ROUTE,
    beam_compact as beam_compact,
    ellipsoid_from_shape as ellipsoid_from_shape,
    ellipsoid_starts as ellipsoid_starts,
    estimate_center as estimate_center,
    estimate_radius as estimate_radius,
    fit_ellipsoid_auto as fit_ellipsoid_auto,
    fit_sphere_auto as fit_sphere_auto,
    fit_spherical_harmonics as fit_spherical_harmonics,
    harmonics_from_ellipsoid as harmonics_from_ellipsoid,
    harmonics_ladder as harmonics_ladder,
    harmonics_twins as harmonics_twins,
    msft_sphere_intensity as msft_sphere_intensity,
    pad_harmonics as pad_harmonics,
    radial_profile as radial_profile,
    random_rotations as random_rotations,
)
from ._lockstep import lockstep_map as lockstep_map
from ._losses import (
    LOSSES as LOSSES,
    AbstractLoss as AbstractLoss,
    Anscombe as Anscombe,
    DataWarning as DataWarning,
    LogIntensity as LogIntensity,
    Poisson as Poisson,
    anscombe_nll as anscombe_nll,
    as_loss as as_loss,
    check_data as check_data,
    log_intensity_nll as log_intensity_nll,
    poisson_nll as poisson_nll,
    profile_scale as profile_scale,
    residuals as residuals,
)
from ._metrics import (
    ellipsoid_axis_errors as ellipsoid_axis_errors,
    ellipsoid_axis_sigmas as ellipsoid_axis_sigmas,
    iou as iou,
)
from ._multires import (
    BEAM_ELONGATION as BEAM_ELONGATION,
    COARSE_MIN_QR as COARSE_MIN_QR,
    STAGE_MAX_STEPS as STAGE_MAX_STEPS,
    STAGE_RTOL as STAGE_RTOL,
    coarse_factor as coarse_factor,
    low_q_crop as low_q_crop,
)
from ._netinit import (
    SH_REFINE_STEPS as SH_REFINE_STEPS,
    START_CLASSES as START_CLASSES,
    fit_from_network as fit_from_network,
    has_harmonics as has_harmonics,
    network_starts as network_starts,
    resolve_network as resolve_network,
)
from ._network import (
    NETWORK_CLASSES as NETWORK_CLASSES,
    CanonicalMap as CanonicalMap,
    InversionCNN as InversionCNN,
    NetworkPredictor as NetworkPredictor,
    body_symmetries as body_symmetries,
    canonical_input as canonical_input,
    harmonics_from_relative as harmonics_from_relative,
    load_network as load_network,
    network_loss as network_loss,
    polar_resample as polar_resample,
    rotation_from_6d as rotation_from_6d,
    sh_twin_signs as sh_twin_signs,
    twin_bodies as twin_bodies,
    twin_rotations as twin_rotations,
)
from ._params import (
    Parametrisation as Parametrisation,
    default_free as default_free,
    valid_parameter_names as valid_parameter_names,
)
from ._regularizers import (
    Compose as Compose,
    SHDegreePrior as SHDegreePrior,
    SHSmoothness as SHSmoothness,
)
from ._report import plot_report as plot_report
from ._result import Alternative as Alternative, FitResult as FitResult
from ._train import train_network as train_network
from ._uncertainty import covariance as covariance, laplace_sigmas as laplace_sigmas
