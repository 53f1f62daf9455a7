"""Deployment tests: the container image, the Helm chart, the systemd unit, Compose."""
