defmodule KV.BucketTest do
  use ExUnit.Case, async: true

  setup do
    bucket = start_supervised!(KV.Bucket)
    %{bucket: bucket}
  end

  test "stores values by key", %{bucket: bucket} do
    assert KV.Bucket.get(bucket, "milk") == nil

    assert KV.Bucket.put(bucket, "milk", 3) == :ok
    assert KV.Bucket.get(bucket, "milk") == 3

    assert KV.Bucket.put(bucket, "milk", 4) == :ok
    assert KV.Bucket.get(bucket, "milk") == 4
  end

  test "keys and values may be any term", %{bucket: bucket} do
    :ok = KV.Bucket.put(bucket, {:a, 1}, %{"b" => [1.5]})
    assert KV.Bucket.get(bucket, {:a, 1}) == %{"b" => [1.5]}
  end

  test "delete returns the old value or nil", %{bucket: bucket} do
    :ok = KV.Bucket.put(bucket, "eggs", 12)
    assert KV.Bucket.delete(bucket, "eggs") == 12
    assert KV.Bucket.get(bucket, "eggs") == nil
    assert KV.Bucket.delete(bucket, "eggs") == nil
  end

  test "speaks the message contract shared with pykv", %{bucket: bucket} do
    assert GenServer.call(bucket, {:put, "k", "v"}) == :ok
    assert GenServer.call(bucket, {:get, "k"}) == "v"
    assert GenServer.call(bucket, {:delete, "k"}) == "v"
    assert GenServer.call(bucket, {:get, "k"}) == nil
    assert GenServer.cast(bucket, {:subscribe, self()}) == :ok
    :ok = GenServer.call(bucket, {:put, "k", 1})
    assert_received {:put, "k", 1}
  end

  test "subscribers get every put and delete", %{bucket: bucket} do
    :ok = KV.Bucket.subscribe(bucket, self())
    :ok = KV.Bucket.put(bucket, "milk", 1)
    assert_received {:put, "milk", 1}

    assert KV.Bucket.delete(bucket, "milk") == 1
    assert_received {:delete, "milk"}
  end

  test "subscribing twice does not duplicate messages", %{bucket: bucket} do
    :ok = KV.Bucket.subscribe(bucket, self())
    :ok = KV.Bucket.subscribe(bucket, self())
    :ok = KV.Bucket.put(bucket, "milk", 1)
    assert_received {:put, "milk", 1}
    refute_received {:put, "milk", 1}
  end

  test "dead subscribers are dropped", %{bucket: bucket} do
    test = self()

    subscriber =
      spawn(fn ->
        receive do
          msg -> send(test, {:subscriber_got, msg})
        end
      end)

    ref = Process.monitor(subscriber)
    :ok = KV.Bucket.subscribe(bucket, subscriber)
    :ok = KV.Bucket.put(bucket, "a", 1)
    assert_receive {:subscriber_got, {:put, "a", 1}}
    assert_receive {:DOWN, ^ref, :process, ^subscriber, :normal}
    # The bucket handles the subscriber's DOWN before this call.
    assert KV.Bucket.get(bucket, "a") == 1
    assert :sys.get_state(bucket).subscribers == %{}
  end

  test "are temporary workers" do
    assert Supervisor.child_spec(KV.Bucket, []).restart == :temporary
  end
end
