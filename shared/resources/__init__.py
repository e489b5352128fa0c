"""The API's resources as pydantic models: the serializers build them and the OpenAPI document is their schema."""
