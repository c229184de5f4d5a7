import Config

# The routing table and the line server port are read from the environment at boot:
# see config/runtime.exs.
