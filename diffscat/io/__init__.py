"""Files and configs: CXI / HDF5 read and write, shape (de)serialisation, TOML configs, length units."""

from ._config import (
    ConfigError as ConfigError,
    apply_overrides as apply_overrides,
    build_detector_model as build_detector_model,
    build_experiment as build_experiment,
    build_shape as build_shape,
    config_photon_energy_eV as config_photon_energy_eV,
    config_wavelength as config_wavelength,
    load_config as load_config,
    material_records as material_records,
    parse_config as parse_config,
    read_toml as read_toml,
)
from ._cxi import (
    CXIData as CXIData,
    CXIWriter as CXIWriter,
    LazyStack as LazyStack,
    NaNPixelWarning as NaNPixelWarning,
    list_entries as list_entries,
    read_cxi as read_cxi,
    write_cxi as write_cxi,
)
from ._schema import Key as Key, check_section as check_section, describe_sections as describe_sections
from ._shape_io import (
    shape_class as shape_class,
    shape_from_dict as shape_from_dict,
    shape_to_dict as shape_to_dict,
)
from ._units import LENGTH_UNITS as LENGTH_UNITS, length_unit_m as length_unit_m
