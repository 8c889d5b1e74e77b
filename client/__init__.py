"""A terminal and programmatic client of the gateway: `agnews jobs|models|classify`."""
