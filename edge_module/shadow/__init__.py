"""Shadow releases: a candidate version answers mirrored live traffic beside the active one, never the client."""
