"""The one Definitions object of the shopflow_daily code location: the settings are read here, once,
and passed to each feature (shopflow_assets/defs/<feature>)."""

from shopflow_assets.commands.cli_errors import install_cli_error_hook
from shopflow_assets.defs import build_defs
from shopflow_assets.settings import read_settings

settings = read_settings()
install_cli_error_hook(settings.start_date)
defs = build_defs(settings)
