;; A proxy-wasm 0.2.1 filter that sets the request's `:path` to the value of its
;; `x-new-path` header (when the request has one), so that tests can try any target a
;; filter might set.
(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 0) ":path")        ;; 5
  (data (i32.const 16) "x-new-path")  ;; 10
  (global $heap (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32)
    (global.set $heap (i32.const 4096)))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (if (i32.eqz (call $get (i32.const 0) (i32.const 16) (i32.const 10) (i32.const 1024) (i32.const 1028)))
      (then
        (drop (call $replace (i32.const 0) (i32.const 0) (i32.const 5)
          (i32.load (i32.const 1024)) (i32.load (i32.const 1028))))))
    (i32.const 0)))
