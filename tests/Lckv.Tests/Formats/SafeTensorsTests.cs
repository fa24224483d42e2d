using System.Runtime.InteropServices;
using Lckv.Formats;
using Lckv.Numerics;
using Xunit.Abstractions;

namespace Lckv.Tests.Formats;

public sealed class SafeTensorsTests(ITestOutputHelper output)
{
    public static TheoryData<string> GoldenCases() =>
    [
        "llama-standard", "llama-bf16-tied", "cla-2", "yoco-sliding", "lckv-sandwich-top-w2", "lckv-all-top",
        "lckv-groups-nodiag", "sandwich-middle",
    ];

    [SharedTheory]
    [MemberData(nameof(GoldenCases))]
    public void OpensGoldenModel(string name)
    {
        string dir = SharedData.Path("golden", name);
        using var set = TensorSet.Open(dir);
        var config = ModelConfig.Load(System.IO.Path.Combine(dir, "config.json"));
        Assert.True(set.Contains("model.embed_tokens.weight"));
        Assert.True(set.Contains("model.norm.weight"));
        Assert.Equal(!config.TieWordEmbeddings, set.Contains("lm_head.weight"));
        var embed = set.Matrix("model.embed_tokens.weight");
        Assert.Equal(config.VocabSize, embed.Rows);
        Assert.Equal(config.HiddenSize, embed.Cols);
        Assert.Equal(config.TorchDtype == "bfloat16" ? DType.BF16 : DType.F32, embed.DType);
        var norm = set.Matrix("model.norm.weight");
        Assert.Equal(1, norm.Rows);
        Assert.Equal(config.HiddenSize, norm.Cols);
        long total = 0;
        foreach (var n in set.Names)
        {
            var info = set.Info(n);
            total += info.Length;
            Assert.Equal(info.ElementCount * DTypes.SizeOf(info.DType), info.Length);
            Assert.True(set.Pointer(n) != 0);
        }
        Assert.Equal(set.DataBytes, total);
        // a value read through the matrix equals the copy
        var copy = set.ReadSingles("model.norm.weight");
        Assert.Equal(copy[3], norm[0, 3]);
        output.WriteLine($"{name}: {set.Names.Count()} tensors, {set.DataBytes} bytes");
    }

    [SharedTheory]
    [MemberData(nameof(GoldenCases))]
    public void OpensGoldenExpected(string name)
    {
        using var f = SafeTensorsFile.Open(SharedData.Path("golden", name, "expected.safetensors"));
        var ids = f.Info("input_ids");
        Assert.Equal(DType.I64, ids.DType);
        Assert.Equal(2, ids.Shape.Length);
        Assert.True(f.Tensors.ContainsKey("logits"));
        Assert.True(f.Tensors.ContainsKey("loss"));
        using var set = TensorSet.Open(SharedData.Path("golden", name, "expected.safetensors"));
        var values = set.ReadInt64s("input_ids");
        Assert.Equal(ids.ElementCount, values.Length);
        Assert.All(values, v => Assert.InRange(v, 0, 1 << 20));
    }

    [Fact]
    public void WriterRoundTrips()
    {
        using var tmp = new TempDir();
        string path = tmp.File("rt.safetensors");
        float[] a = [1, 2, 3, 4, 5, 6];
        long[] b = [7, -8, 9];
        ushort[] c = [DTypes.SingleToBF16(1.5f), DTypes.SingleToBF16(-2f)];
        SafeTensorsWriter.Write(path,
        [
            TensorData.FromSingles("z.a", [2, 3], a),
            TensorData.FromInt64s("b", [3], b),
            new TensorData("c", DType.BF16, [2], MemoryMarshal.AsBytes<ushort>(c).ToArray()),
            new TensorData("empty", DType.F32, [0, 4], Array.Empty<byte>()),
        ], new Dictionary<string, string> { ["format"] = "pt", ["note"] = "héllo" });

        Assert.Empty(Directory.GetFiles(tmp.Root, "*.tmp-*"));
        var bytes = File.ReadAllBytes(path);
        Assert.Equal(0, (8 + BitConverter.ToInt64(bytes, 0)) % 8);

        using var set = TensorSet.Open(path);
        Assert.Equal(["b", "c", "empty", "z.a"], set.Names.Order(StringComparer.Ordinal));
        Assert.Equal(a, set.ReadSingles("z.a"));
        Assert.Equal(b, set.ReadInt64s("b"));
        Assert.Equal([1.5f, -2f], set.ReadSingles("c"));
        var m = set.Matrix("z.a");
        Assert.Equal((2, 3), (m.Rows, m.Cols));
        Assert.Equal(6f, m[1, 2]);
        Assert.Equal([0L, 4L], set.Info("empty").Shape);
        Assert.Equal("héllo", set.Files[0].Metadata["note"]);

        // overwrite in place
        SafeTensorsWriter.Write(path, [TensorData.FromSingles("x", [1], [42f])]);
        using var again = SafeTensorsFile.Open(path);
        Assert.Single(again.Tensors);
        Assert.Empty(again.Metadata);
    }

    [Fact]
    public void WriterRejectsWrongLength()
    {
        using var tmp = new TempDir();
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(tmp.File("x.safetensors"),
            [new TensorData("x", DType.F32, [3], new byte[8])]));
        Assert.Empty(Directory.GetFiles(tmp.Root));
    }

    [Fact]
    public void MatrixRejectsNonFloatAndHighRank()
    {
        using var tmp = new TempDir();
        string path = tmp.File("m.safetensors");
        SafeTensorsWriter.Write(path,
        [
            TensorData.FromInt64s("ids", [2], [1, 2]),
            TensorData.FromSingles("cube", [1, 2, 2], [1, 2, 3, 4]),
        ]);
        using var set = TensorSet.Open(path);
        Assert.Contains("dtype I64", Assert.Throws<LckvException>(() => set.Matrix("ids")).Message);
        Assert.Contains("1-D or 2-D", Assert.Throws<LckvException>(() => set.Matrix("cube")).Message);
        Assert.Contains("no tensor 'missing'", Assert.Throws<LckvException>(() => set.Matrix("missing")).Message);
    }

    [Fact]
    public void DisposeReleasesAndIsIdempotent()
    {
        using var tmp = new TempDir();
        string path = tmp.File("d.safetensors");
        SafeTensorsWriter.Write(path, [TensorData.FromSingles("x", [2], [1, 2])]);
        var f = SafeTensorsFile.Open(path);
        f.Dispose();
        f.Dispose();
        Assert.Throws<ObjectDisposedException>(() => f.Pointer("x"));
        File.Delete(path);
        Assert.False(File.Exists(path));
    }

    private static LckvException OpenFails(TempDir tmp, byte[] bytes, string name = "bad.safetensors")
    {
        string path = tmp.Write(name, bytes);
        return Assert.Throws<LckvException>(() => { using var _ = SafeTensorsFile.Open(path); });
    }

    [SharedFact]
    public void TruncatedGoldenFileFails()
    {
        using var tmp = new TempDir();
        var bytes = File.ReadAllBytes(SharedData.Path("golden", "llama-standard", "model.safetensors"));
        var e = OpenFails(tmp, bytes[..(bytes.Length - 100)]);
        Assert.Contains("bad.safetensors", e.Message);
        Assert.Contains("truncated", e.Message);
        // cut inside the header
        e = OpenFails(tmp, bytes[..200], "short.safetensors");
        Assert.Contains("header length", e.Message);
        e = OpenFails(tmp, bytes[..5], "tiny.safetensors");
        Assert.Contains("too short", e.Message);
    }

    [Fact]
    public void HeaderLengthBeyondFileFails()
    {
        using var tmp = new TempDir();
        var e = OpenFails(tmp, TempDir.RawSafeTensors("{}", 0, declaredLength: 1000));
        Assert.Contains("header length 1000 exceeds the file", e.Message);
        e = OpenFails(tmp, TempDir.RawSafeTensors("{}", 0, declaredLength: ulong.MaxValue));
        Assert.Contains("exceeds the file", e.Message);
    }

    [Theory]
    [InlineData("{\"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]", "malformed header JSON")]
    [InlineData("{\"x\": {\"dtype\": \"F32\",, }}", "malformed header JSON")]
    [InlineData("[1, 2, 3]  ", "expected an object")]
    [InlineData("{\"x\": 5}", "tensor 'x' is a JSON number")]
    [InlineData("{\"x\": {\"dtype\": \"Q4\", \"shape\": [1], \"data_offsets\": [0, 4]}}", "unsupported dtype 'Q4'")]
    [InlineData("{\"x\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", "non-negative integers")]
    [InlineData("{\"x\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", "non-negative integers")]
    [InlineData("{\"x\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", "no 'shape'")]
    [InlineData("{\"x\": {\"dtype\": \"F32\", \"shape\": [1]}}", "no 'data_offsets'")]
    [InlineData("{\"x\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", "no 'dtype'")]
    [InlineData("{\"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", "must be an array [begin, end]")]
    [InlineData("{\"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 4]}}", "end before they begin")]
    [InlineData("{\"x\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", "needs 12 bytes but data_offsets [0, 8] hold 8")]
    [InlineData("{\"x\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}, \"y\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [12, 20]}}", "overlap")]
    [InlineData("{\"x\": {\"dtype\": \"F32\", \"shape\": [8], \"data_offsets\": [8, 40]}}", "byte range [8, 40) exceeds the data section (32 bytes")]
    [InlineData("{\"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, \"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", "appears twice")]
    [InlineData("{\"__metadata__\": {\"a\": 1}}", "expected a string")]
    [InlineData("{\"x\": {\"dtype\": \"F32\", \"shape\": [4611686018427387904, 4], \"data_offsets\": [0, 16]}}", "too large")]
    public void BadHeaderFails(string header, string expected)
    {
        using var tmp = new TempDir();
        var e = OpenFails(tmp, TempDir.RawSafeTensors(header, 32));
        output.WriteLine(e.Message);
        Assert.Contains("bad.safetensors", e.Message);
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void ValidRawHeaderWithPaddingAndMetadataOpens()
    {
        using var tmp = new TempDir();
        string path = tmp.Write("ok.safetensors", TempDir.RawSafeTensors(
            "{\"__metadata__\": {\"format\": \"pt\"}, \"x\": {\"dtype\": \"U8\", \"shape\": [2, 2], \"data_offsets\": [4, 8]}, \"e\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [4, 4]}}      ", 8));
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal("pt", f.Metadata["format"]);
        Assert.Equal([4, 5, 6, 7], f.Bytes("x").ToArray());
    }

    [Fact]
    public void EmptyHeaderOpens()
    {
        using var tmp = new TempDir();
        string path = tmp.Write("empty.safetensors", TempDir.RawSafeTensors("{}      ", 0));
        using var set = TensorSet.Open(path);
        Assert.Empty(set.Names);
        Assert.Equal(0, set.DataBytes);
        string written = tmp.File("written.safetensors");
        SafeTensorsWriter.Write(written, []);
        using var again = SafeTensorsFile.Open(written);
        Assert.Empty(again.Tensors);
    }

    [Fact]
    public void WriterIntoMissingFolderLeavesNothing()
    {
        using var tmp = new TempDir();
        Assert.ThrowsAny<IOException>(() => SafeTensorsWriter.Write(tmp.File("no/such/x.safetensors"), [TensorData.FromSingles("x", [1], [1f])]));
        Assert.Empty(Directory.GetFileSystemEntries(tmp.Root));
    }

    // ---- sharded checkpoints ----

    private static void WriteShards(TempDir tmp)
    {
        SafeTensorsWriter.Write(tmp.File("model-00001-of-00002.safetensors"),
            [TensorData.FromSingles("a", [2], [1, 2]), TensorData.FromSingles("b", [1], [3])]);
        SafeTensorsWriter.Write(tmp.File("model-00002-of-00002.safetensors"),
            [TensorData.FromSingles("c", [2, 2], [4, 5, 6, 7])]);
    }

    private const string GoodIndex = """
        {"metadata": {"total_size": 28}, "weight_map": {
          "a": "model-00001-of-00002.safetensors",
          "b": "model-00001-of-00002.safetensors",
          "c": "model-00002-of-00002.safetensors"}}
        """;

    [Fact]
    public void OpensShardedCheckpoint()
    {
        using var tmp = new TempDir();
        WriteShards(tmp);
        tmp.WriteText("model.safetensors.index.json", GoodIndex);
        using var set = TensorSet.Open(tmp.Root);
        Assert.Equal(["a", "b", "c"], set.Names.Order(StringComparer.Ordinal));
        Assert.Equal(2, set.Files.Count);
        Assert.Equal([4f, 5, 6, 7], set.ReadSingles("c"));
        Assert.Equal(7f, set.Matrix("c")[1, 1]);
        Assert.Equal(28, set.DataBytes);
        // the index file itself also opens
        using var byIndex = TensorSet.Open(tmp.File("model.safetensors.index.json"));
        Assert.Equal(3, byIndex.Names.Count());
    }

    [Theory]
    [InlineData("""{"weight_map": {"a": "model-00001-of-00002.safetensors", "c": "model-00003-of-00003.safetensors"}}""", "shard 'model-00003-of-00003.safetensors' (holding tensor 'c') not found")]
    [InlineData("""{"weight_map": {"a": "model-00001-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}}""", "puts tensor 'c' in shard 'model-00001-of-00002.safetensors', which does not contain it")]
    [InlineData("""{"weight_map": {"a": "model-00001-of-00002.safetensors", "zz": "model-00002-of-00002.safetensors"}}""", "puts tensor 'zz' in shard")]
    [InlineData("""{"weight_map": {"a": "../model-00001-of-00002.safetensors"}}""", "not a file in this folder")]
    [InlineData("""{"weight_map": {"a": 3}}""", "expected a shard file name")]
    [InlineData("""{"metadata": {}}""", "no 'weight_map'")]
    [InlineData("{\"weight_map\": {\"a\": \"x\"", "malformed JSON")]
    public void BadShardIndexFails(string index, string expected)
    {
        using var tmp = new TempDir();
        WriteShards(tmp);
        tmp.WriteText("model.safetensors.index.json", index);
        var e = Assert.Throws<LckvException>(() => { using var _ = TensorSet.Open(tmp.Root); });
        output.WriteLine(e.Message);
        Assert.Contains("model.safetensors.index.json", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void TensorInTwoShardsFails()
    {
        using var tmp = new TempDir();
        WriteShards(tmp);
        SafeTensorsWriter.Write(tmp.File("model-00002-of-00002.safetensors"),
            [TensorData.FromSingles("c", [1], [4]), TensorData.FromSingles("a", [1], [9])]);
        tmp.WriteText("model.safetensors.index.json", GoodIndex);
        var e = Assert.Throws<LckvException>(() => { using var _ = TensorSet.Open(tmp.Root); });
        Assert.Contains("tensor 'a' is in two shards", e.Message);
    }

    [Fact]
    public void MissingCheckpointFails()
    {
        using var tmp = new TempDir();
        Assert.Contains("no model.safetensors", Assert.Throws<LckvException>(() => TensorSet.Open(tmp.Root)).Message);
        Assert.Contains("no such file", Assert.Throws<LckvException>(() => TensorSet.Open(tmp.File("nope.safetensors"))).Message);
    }
}
