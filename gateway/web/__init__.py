"""The station screen: a local web page officers look at instead of logs."""
