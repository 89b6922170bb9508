"""The strategies a call goes through: the circuit decorator, retries, fallbacks, scoped names,
all over one gate per decoration."""
