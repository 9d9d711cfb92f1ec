"""A mobile enforcement terminal, simulated: pairs with a station, uploads over tus, follows results."""
