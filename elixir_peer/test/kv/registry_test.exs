defmodule KV.RegistryTest do
  use ExUnit.Case, async: true

  setup context do
    _ = start_supervised!({KV.Registry, name: context.test})
    %{registry: context.test}
  end

  test "spawns buckets", %{registry: registry} do
    assert KV.Registry.lookup(registry, "shopping") == :error

    bucket = KV.Registry.create(registry, "shopping")
    assert is_pid(bucket)
    assert KV.Registry.lookup(registry, "shopping") == {:ok, bucket}

    KV.Bucket.put(bucket, "milk", 1)
    assert KV.Bucket.get(bucket, "milk") == 1
  end

  test "create is idempotent", %{registry: registry} do
    bucket = KV.Registry.create(registry, "shopping")
    assert KV.Registry.create(registry, "shopping") == bucket
    refute KV.Registry.create(registry, "other") == bucket
  end

  test "answers the call contract shared with pykv", %{registry: registry} do
    assert GenServer.call(registry, {:lookup, "shopping"}) == :error
    bucket = GenServer.call(registry, {:create, "shopping"})
    assert is_pid(bucket)
    assert GenServer.call(registry, {:lookup, "shopping"}) == {:ok, bucket}
    assert GenServer.call(registry, {:create, "shopping"}) == bucket

    # lookup/2 with a pid (or {name, node}) goes through the server
    assert KV.Registry.lookup(Process.whereis(registry), "shopping") == {:ok, bucket}
    assert KV.Registry.lookup({registry, node()}, "shopping") == {:ok, bucket}
  end

  test "removes buckets on exit", %{registry: registry} do
    bucket = KV.Registry.create(registry, "shopping")
    GenServer.stop(bucket)

    # Do a call to ensure the registry processed the DOWN message
    _ = KV.Registry.create(registry, "bogus")
    assert KV.Registry.lookup(registry, "shopping") == :error
  end

  test "removes bucket on crash", %{registry: registry} do
    bucket = KV.Registry.create(registry, "shopping")

    # Stop the bucket with non-normal reason
    GenServer.stop(bucket, :shutdown)

    # Do a call to ensure the registry processed the DOWN message
    _ = KV.Registry.create(registry, "bogus")
    assert KV.Registry.lookup(registry, "shopping") == :error
  end

  test "bucket can crash at any time", %{registry: registry} do
    bucket = KV.Registry.create(registry, "shopping")

    # Simulate a bucket crash by explicitly and synchronously shutting it down
    GenServer.stop(bucket, :shutdown)

    # Now trying to call the dead process causes a :noproc exit
    catch_exit(KV.Bucket.put(bucket, "milk", 3))
  end

  test "a new bucket replaces a dead one", %{registry: registry} do
    bucket = KV.Registry.create(registry, "shopping")
    Process.exit(bucket, :kill)
    _ = KV.Registry.create(registry, "bogus")

    new_bucket = KV.Registry.create(registry, "shopping")
    assert Process.alive?(new_bucket)
    refute new_bucket == bucket
  end
end
