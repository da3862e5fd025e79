"""Function specs of a tool module, built exactly as Open WebUI 0.12.4 builds them (runs inside the sandbox).

Ports, line for line, of:
- ``open_webui/utils/tools.py``: ``get_functions_from_tool``, ``parse_description``, ``parse_docstring``,
  ``convert_function_to_pydantic_model``, ``clean_properties``, ``clean_openai_tool_schema``, ``get_tool_specs``;
- ``langchain_core/utils/function_calling.py`` 1.4.8 (Open WebUI's ``convert_pydantic_model_to_openai_function_spec``
  is its ``convert_to_openai_function``): ``_rm_titles``, ``_convert_json_schema_to_openai_function``,
  ``_convert_pydantic_to_openai_function``; and ``langchain_core/utils/json_schema.py``'s ``dereference_refs``;
- ``open_webui/utils/plugin.py``: ``replace_imports``, ``resolve_valves_schema_options``.
Standard library and pydantic only: this module is bound into the jail on its own.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any, get_type_hints

from pydantic import BaseModel, Field, create_model

# -- open_webui/utils/tools.py ------------------------------------------------------------------------------


def get_functions_from_tool(tool: object) -> list[Callable[..., Any]]:
    return [
        getattr(tool, func)
        for func in dir(tool)
        if callable(getattr(tool, func)) and not func.startswith("_") and not inspect.isclass(getattr(tool, func))
    ]


def parse_description(docstring: str | None) -> str:
    if not docstring:
        return ""
    lines = [line.strip() for line in docstring.strip().split("\n")]
    description_lines: list[str] = []
    for line in lines:
        if re.match(r":param", line) or re.match(r":return", line):
            break
        description_lines.append(line)
    return "\n".join(description_lines)


def parse_docstring(docstring: str | None) -> dict[str, str]:
    if not docstring:
        return {}
    param_pattern = re.compile(r":param (\w+):\s*(.*)")
    param_descriptions: dict[str, str] = {}
    current_param: str | None = None
    for line in docstring.splitlines():
        line = line.strip()
        match = param_pattern.match(line)
        if match:
            param_name, param_description = match.groups()
            current_param = None if param_name.startswith("__") else param_name
            if current_param:
                param_descriptions[current_param] = param_description
            continue
        if line.startswith(":"):
            current_param = None
            continue
        if current_param and line:
            param_descriptions[current_param] = "\n".join(filter(None, [param_descriptions[current_param], line]))
    return param_descriptions


def convert_function_to_pydantic_model(func: Callable[..., Any]) -> type[BaseModel]:
    type_hints = get_type_hints(func)
    signature = inspect.signature(func)
    parameters = signature.parameters
    docstring = func.__doc__
    function_description = parse_description(docstring)
    function_param_descriptions = parse_docstring(docstring)
    field_defs: dict[str, Any] = {}
    for name, param in parameters.items():
        type_hint = type_hints.get(name, Any)
        default_value = param.default if param.default is not param.empty else ...
        param_description = function_param_descriptions.get(name, None)
        if param_description:
            field_defs[name] = (type_hint, Field(default_value, description=param_description))
        else:
            field_defs[name] = type_hint, default_value
    model = create_model(func.__name__, **field_defs)
    model.__doc__ = function_description
    return model


def clean_properties(schema: Any) -> None:
    if not isinstance(schema, dict):
        return
    if "anyOf" in schema:
        non_null_types = [t for t in schema["anyOf"] if t.get("type") != "null"]
        if len(non_null_types) == 1:
            schema.update(non_null_types[0])
            del schema["anyOf"]
        else:
            schema["anyOf"] = non_null_types
    if "default" in schema and schema["default"] is None:
        del schema["default"]
    if "type" not in schema and "anyOf" not in schema and "properties" not in schema:
        schema["type"] = "string"
    if "properties" in schema:
        for _, prop_schema in schema["properties"].items():
            clean_properties(prop_schema)
    if "items" in schema:
        clean_properties(schema["items"])


def clean_openai_tool_schema(spec: dict[str, Any]) -> dict[str, Any]:
    cleaned_spec = copy.deepcopy(spec)
    if "parameters" in cleaned_spec:
        clean_properties(cleaned_spec["parameters"])
    return cleaned_spec


def get_tool_specs(tool_module: object) -> list[dict[str, Any]]:
    function_models = map(convert_function_to_pydantic_model, get_functions_from_tool(tool_module))
    return [
        clean_openai_tool_schema(convert_pydantic_model_to_openai_function_spec(function_model))
        for function_model in function_models
    ]


# -- langchain_core 1.4.8 -----------------------------------------------------------------------------------


def _retrieve_ref(path: str, schema: dict[str, Any]) -> Any:
    components = path.split("/")
    if components[0] != "#":
        raise ValueError("ref paths are expected to be URI fragments, meaning they should start with #.")
    out: Any = schema
    for component in components[1:]:
        if component in out:
            if isinstance(out, list):
                raise KeyError(f"Reference '{path}' not found.")
            out = out[component]
        elif component.isdigit():
            index = int(component)
            if (isinstance(out, list) and 0 <= index < len(out)) or (isinstance(out, dict) and index in out):
                out = out[index]
            else:
                raise KeyError(f"Reference '{path}' not found.")
        else:
            raise KeyError(f"Reference '{path}' not found.")
    return copy.deepcopy(out)


def _process_dict_properties(
    properties: dict[str, Any], full_schema: dict[str, Any], processed_refs: set[str], skip_keys: Sequence[str]
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in properties.items():
        if key in skip_keys:
            result[key] = copy.deepcopy(value)
        elif isinstance(value, dict | list):
            result[key] = _dereference_refs_helper(value, full_schema, processed_refs, skip_keys)
        else:
            result[key] = value
    return result


def _dereference_refs_helper(
    obj: Any, full_schema: dict[str, Any], processed_refs: set[str] | None, skip_keys: Sequence[str]
) -> Any:
    if processed_refs is None:
        processed_refs = set()
    if isinstance(obj, dict) and "$ref" in obj:
        ref_path = obj["$ref"]
        additional_properties = {key: value for key, value in obj.items() if key != "$ref"}
        if ref_path in processed_refs:
            return _process_dict_properties(additional_properties, full_schema, processed_refs, skip_keys)
        processed_refs.add(ref_path)
        referenced_object = copy.deepcopy(_retrieve_ref(ref_path, full_schema))
        resolved_reference = _dereference_refs_helper(referenced_object, full_schema, processed_refs, skip_keys)
        processed_refs.remove(ref_path)
        if not additional_properties:
            return resolved_reference
        merged_result: dict[str, Any] = {}
        if isinstance(resolved_reference, dict):
            merged_result.update(resolved_reference)
        merged_result.update(_process_dict_properties(additional_properties, full_schema, processed_refs, skip_keys))
        return merged_result
    if isinstance(obj, dict):
        return _process_dict_properties(obj, full_schema, processed_refs, skip_keys)
    if isinstance(obj, list):
        return [_dereference_refs_helper(item, full_schema, processed_refs, skip_keys) for item in obj]
    return obj


def dereference_refs(schema_obj: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = _dereference_refs_helper(schema_obj, schema_obj, None, ["$defs"])
    return result


def _rm_titles(kv: dict[str, Any], prev_key: str = "") -> dict[str, Any]:
    new_kv: dict[str, Any] = {}
    for k, v in kv.items():
        if k == "title":
            if isinstance(v, dict) and prev_key == "properties":
                new_kv[k] = _rm_titles(v, k)
            else:
                continue
        elif isinstance(v, dict):
            new_kv[k] = _rm_titles(v, k)
        else:
            new_kv[k] = v
    return new_kv


def convert_pydantic_model_to_openai_function_spec(model: type[BaseModel]) -> dict[str, Any]:
    """langchain's ``convert_to_openai_function`` for a pydantic v2 model class."""
    schema = dereference_refs(model.model_json_schema())
    schema.pop("definitions", None)
    schema.pop("$defs", None)
    title = schema.pop("title", "")
    default_description = schema.pop("description", "")
    return {"name": title, "description": default_description, "parameters": _rm_titles(schema)}


# -- open_webui/utils/plugin.py -----------------------------------------------------------------------------


def replace_imports(content: str) -> str:
    replacements = {
        "from utils": "from open_webui.utils",
        "from apps": "from open_webui.apps",
        "from main": "from open_webui.main",
        "from config": "from open_webui.config",
    }
    for old, new in replacements.items():
        content = content.replace(old, new)
    return content


def resolve_valves_schema_options(valves_class: type, schema: dict[str, Any], user: Any = None) -> dict[str, Any]:
    if not schema or "properties" not in schema:
        return schema
    schema = dict(schema)
    schema["properties"] = dict(schema.get("properties", {}))
    for prop_name, prop_schema in list(schema["properties"].items()):
        if not hasattr(valves_class, "model_fields"):
            continue
        field_info = valves_class.model_fields.get(prop_name)
        if not field_info:
            continue
        json_schema_extra = field_info.json_schema_extra
        if not json_schema_extra or not isinstance(json_schema_extra, dict):
            continue
        input_config = json_schema_extra.get("input")
        if not input_config or not isinstance(input_config, dict):
            continue
        options = input_config.get("options")
        if options is None:
            continue
        resolved_options = None
        if isinstance(options, list):
            resolved_options = options
        elif isinstance(options, str) and options:
            method = getattr(valves_class, options, None)
            if method is None or not callable(method):
                continue
            try:
                params = inspect.signature(method).parameters
                kwargs = {}
                if "__user__" in params and user is not None:
                    kwargs["__user__"] = user.model_dump() if hasattr(user, "model_dump") else user
                if "user" in params and user is not None:
                    kwargs["user"] = user.model_dump() if hasattr(user, "model_dump") else user
                resolved_options = method(**kwargs) if kwargs else method()
                if not isinstance(resolved_options, list):
                    continue
            except Exception:
                continue
        else:
            continue
        schema["properties"][prop_name] = dict(prop_schema)
        if "input" not in schema["properties"][prop_name]:
            schema["properties"][prop_name]["input"] = {"type": "select"}
        else:
            schema["properties"][prop_name]["input"] = dict(schema["properties"][prop_name].get("input", {}))
        schema["properties"][prop_name]["input"]["options"] = resolved_options
    return schema
