"""cc_grpc_library: protoc + grpc_cpp_plugin from Debian, wrapped as a cc_library.

Native proto_library would need @com_google_protobuf (a download), so a genrule
runs /usr/bin/protoc directly. Imports of well-known types resolve through
/usr/include.
"""

def cc_proto_and_grpc_library(name, src, deps = [], grpc = True, **kwargs):
    base = src[:-len(".proto")]
    outs = [base + ".pb.h", base + ".pb.cc"]
    cmd = ("/usr/bin/protoc --proto_path=. --proto_path=/usr/include " +
           "--cpp_out=$(GENDIR) ")
    if grpc:
        outs += [base + ".grpc.pb.h", base + ".grpc.pb.cc"]
        cmd += "--grpc_out=$(GENDIR) --plugin=protoc-gen-grpc=/usr/bin/grpc_cpp_plugin "
    cmd += "$(location %s)" % src
    native.genrule(
        name = name + "_codegen",
        srcs = [src],
        outs = outs,
        cmd = cmd,
    )
    native.cc_library(
        name = name,
        srcs = [o for o in outs if o.endswith(".cc")],
        hdrs = [o for o in outs if o.endswith(".h")],
        deps = deps + ["//third_party:protobuf"] + (["//third_party:grpc++"] if grpc else []),
        **kwargs
    )
