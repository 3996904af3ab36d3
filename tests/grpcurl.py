"""Runs a grpcurl command line the way grpcurl does, through server reflection only.

grpcurl is not packaged for Debian or PyPI, so the README's session is checked with this:
descriptors come from the server's reflection service (no .proto files), `-d` JSON is parsed
with the protobuf JSON mapping grpcurl uses, `-H` becomes metadata. Supported: `-plaintext`,
`-d`, `-H`, `list [SERVICE]`, `describe SYMBOL`, and unary or server-streaming calls.
"""

from __future__ import annotations

import shlex

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

__all__ = ["run_grpcurl"]


def run_grpcurl(command: str, address: str) -> list[str]:
    """Run `command` (a README line) against `address`; answer what grpcurl would print."""
    argv = shlex.split(command)
    assert argv[0] == "grpcurl", argv
    args, data, headers, plaintext = [], None, [], False
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-plaintext":
            plaintext = True
        elif arg == "-d":
            i += 1
            data = argv[i]
        elif arg == "-H":
            i += 1
            name, _, value = argv[i].partition(":")
            headers.append((name.strip().lower(), value.strip()))
        elif arg.startswith("-"):
            raise ValueError(f"flag {arg} is not supported by this runner")
        else:
            args.append(arg)
        i += 1
    assert plaintext, "the README talks to a plaintext port"
    _readme_address, verb, *rest = args
    with grpc.insecure_channel(address) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(db)
        if verb == "list":
            if not rest:
                return sorted(db.get_services())
            service = pool.FindServiceByName(rest[0])
            return [m.full_name for m in service.methods]
        if verb == "describe":
            symbol = rest[0]
            try:
                return [pool.FindServiceByName(symbol).full_name]
            except KeyError:
                return [pool.FindMessageTypeByName(symbol).full_name]
        service_name, _, method_name = verb.partition("/")
        method = pool.FindServiceByName(service_name).methods_by_name[method_name]
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        request = json_format.Parse(data or "{}", request_cls())
        path = f"/{service_name}/{method_name}"
        if method.server_streaming:
            call = channel.unary_stream(
                path,
                request_serializer=request_cls.SerializeToString,
                response_deserializer=response_cls.FromString,
            )
            responses = list(call(request, metadata=headers, timeout=10))
        else:
            call = channel.unary_unary(
                path,
                request_serializer=request_cls.SerializeToString,
                response_deserializer=response_cls.FromString,
            )
            responses = [call(request, metadata=headers, timeout=10)]
        return [json_format.MessageToJson(r) for r in responses]
