"""The one exception type that means "the user asked for something we cannot do"."""


class ConfigError(ValueError):
    """Bad input from a user: the CLI prints it as one line, the app shows it with st.error."""
