"""`python -m gateway`: run a gateway instance."""

from gateway.app import create_app
from shared.service import serve

serve("gateway", create_app, lambda settings: settings.gateway_port)
