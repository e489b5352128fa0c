"""Every request the service takes, declared once as a pydantic model: job, chat completion, sweep, batch line.

Each module holds one request (job, chat, sweep, batch); types holds the value kinds they share and errors maps
pydantic's errors to the API's ``{field, message}`` problems. Importing this package imports none of them.
"""
