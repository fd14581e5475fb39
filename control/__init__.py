"""Control plane: the appliance agent, configuration, and the ``spectra`` CLI."""
