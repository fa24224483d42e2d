using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization;
using Lckv.Formats;

namespace Lckv.Training;

/// <summary>SplitMix64 with its state visible, so a data loader can save and restore it exactly.</summary>
public struct TrainingRng(ulong seed)
{
    public ulong State = seed;

    public ulong Next()
    {
        ulong z = State += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [0, n) without modulo bias (rejection sampling), n &gt; 0.</summary>
    public ulong NextBelow(ulong n)
    {
        ArgumentOutOfRangeException.ThrowIfZero(n);
        ulong limit = ulong.MaxValue - (ulong.MaxValue % n + 1) % n; // largest multiple of n, minus one
        while (true)
        {
            ulong x = Next();
            if (x <= limit) return x % n;
        }
    }
}

/// <summary>One source file of a prepared dataset and how its tokens were split.</summary>
public sealed record DataSource(
    [property: JsonPropertyName("path")] string Path,
    [property: JsonPropertyName("tokens")] long Tokens,
    [property: JsonPropertyName("train_tokens")] long TrainTokens,
    [property: JsonPropertyName("val_tokens")] long ValTokens);

/// <summary>meta.json of a prepared dataset.</summary>
public sealed record DataMeta
{
    public const string CurrentFormat = "lckv-tokens-v1";

    [JsonPropertyName("format")] public string Format { get; init; } = CurrentFormat;
    /// <summary>"uint16" (vocab_size &lt;= 65535) or "int32", little-endian.</summary>
    [JsonPropertyName("dtype")] public string DType { get; init; } = "uint16";
    [JsonPropertyName("vocab_size")] public int VocabSize { get; init; }
    [JsonPropertyName("tokenizer")] public string? Tokenizer { get; init; }
    [JsonPropertyName("tokenizer_sha256")] public string? TokenizerSha256 { get; init; }
    [JsonPropertyName("bos_prepended")] public bool BosPrepended { get; init; }
    [JsonPropertyName("val_fraction")] public double ValFraction { get; init; }
    /// <summary>How the split was made (always the tail of each source file).</summary>
    [JsonPropertyName("split")] public string Split { get; init; } = "tail-of-each-file";
    [JsonPropertyName("train_tokens")] public long TrainTokens { get; init; }
    [JsonPropertyName("val_tokens")] public long ValTokens { get; init; }
    [JsonPropertyName("sources")] public IReadOnlyList<DataSource> Sources { get; init; } = [];

    [JsonIgnore] public int BytesPerToken => DType == "uint16" ? 2 : 4;
}

/// <summary>
/// A tokenized corpus prepared for training: a folder with <c>meta.json</c>, <c>train.bin</c> and <c>val.bin</c>
/// (little-endian uint16 token ids when the vocabulary has at most 65535 entries, int32 otherwise).
/// </summary>
/// <remarks>
/// Split: every source file is tokenized on its own (with BOS in front when the tokenizer has one); its first
/// <c>n - floor(valFraction * n)</c> tokens go to train.bin, the rest (its tail) to val.bin, files in the order
/// given. Validation text is therefore never seen in training and comes from every file in proportion. The folder is
/// written atomically (<see cref="CheckpointFolder"/>). The token files are memory-mapped when read.
/// </remarks>
public sealed class TokenDataset : IDisposable
{
    public const string MetaFileName = "meta.json";
    public const string TrainFileName = "train.bin";
    public const string ValFileName = "val.bin";

    private static readonly JsonSerializerOptions _jsonOptions = new() { WriteIndented = true };

    public string Folder { get; }
    public DataMeta Meta { get; }
    public TokenFile Train { get; }
    public TokenFile Validation { get; }

    private TokenDataset(string folder, DataMeta meta, TokenFile train, TokenFile val)
    {
        Folder = folder;
        Meta = meta;
        Train = train;
        Validation = val;
    }

    /// <summary>SHA-256 of meta.json, identifying the dataset in trainer state.</summary>
    public string MetaSha256 => Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(Folder, MetaFileName))));

    /// <summary>Tokenizes text files with a tokenizer and writes the dataset folder (see the remarks on the class).</summary>
    public static DataMeta Prepare(string tokenizerPath, IReadOnlyList<string> files, string outDir, double valFraction,
        bool force = false, Action<int, int>? progress = null)
    {
        if (files.Count == 0) throw new LckvException("no input files: give one or more text files");
        foreach (var f in files)
            if (!File.Exists(f)) throw new LckvException($"input file '{f}' does not exist");
        CheckFraction(valFraction);
        CheckTarget(outDir, force);
        var tokenizer = TextTokenizer.Load(tokenizerPath);
        string tokenizerFile = Path.GetFullPath(tokenizer.Source);
        bool bos = tokenizer.BosId is not null;
        var docs = new List<(string, int[])>(files.Count);
        for (int i = 0; i < files.Count; i++)
        {
            progress?.Invoke(i, files.Count);
            string text = ReadUtf8Text(files[i]);
            docs.Add((Path.GetFullPath(files[i]), tokenizer.Encode(text, addBos: bos)));
        }
        progress?.Invoke(files.Count, files.Count);
        var hash = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(tokenizerFile)));
        return Write(outDir, docs, tokenizer.VocabSize, valFraction, tokenizerFile, hash, bos, force);
    }

    /// <summary>A text file's contents; LckvException for a binary file (a NUL byte) or bytes that are not UTF-8, which
    /// would otherwise be tokenized as replacement characters.</summary>
    private static string ReadUtf8Text(string path)
    {
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new LckvException($"{path}: cannot read: {e.Message}", e);
        }
        int nul = Array.IndexOf(bytes, (byte)0);
        if (nul >= 0) throw new LckvException($"{path}: a NUL byte at offset {nul}; this is a binary file, not text");
        var span = bytes.AsSpan();
        for (int at = 0; at < span.Length;)
        {
            if (System.Text.Rune.DecodeFromUtf8(span[at..], out _, out int used) != System.Buffers.OperationStatus.Done)
                throw new LckvException($"{path}: not UTF-8 text (an invalid byte sequence at offset {at})");
            at += used;
        }
        int bom = span.StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF]) ? 3 : 0;
        return System.Text.Encoding.UTF8.GetString(span[bom..]);
    }

    /// <summary>Writes a dataset folder from token sequences (one per source), splitting each one's tail off.</summary>
    public static DataMeta Write(string outDir, IReadOnlyList<(string Path, int[] Tokens)> sources, int vocabSize,
        double valFraction, string? tokenizer = null, string? tokenizerSha256 = null, bool bosPrepended = false, bool force = false)
    {
        CheckFraction(valFraction);
        CheckTarget(outDir, force);
        if (vocabSize <= 0) throw new LckvException($"vocabulary size must be positive, not {vocabSize}");
        bool narrow = vocabSize <= ushort.MaxValue;
        var list = new List<DataSource>();
        long train = 0, val = 0;
        foreach (var (path, tokens) in sources)
        {
            for (int i = 0; i < tokens.Length; i++)
                if ((uint)tokens[i] >= (uint)vocabSize)
                    throw new LckvException($"{path}: token {i} has id {tokens[i]}, outside the vocabulary [0, {vocabSize})");
            long nTrain = TrainCount(tokens.Length, valFraction);
            list.Add(new DataSource(path, tokens.Length, nTrain, tokens.Length - nTrain));
            train += nTrain;
            val += tokens.Length - nTrain;
        }
        var meta = new DataMeta
        {
            DType = narrow ? "uint16" : "int32",
            VocabSize = vocabSize,
            Tokenizer = tokenizer,
            TokenizerSha256 = tokenizerSha256,
            BosPrepended = bosPrepended,
            ValFraction = valFraction,
            TrainTokens = train,
            ValTokens = val,
            Sources = list,
        };
        CheckpointFolder.Write(outDir, tmp =>
        {
            WriteTokens(Path.Combine(tmp, TrainFileName), sources, narrow, t => (0, (int)TrainCount(t.Length, valFraction)));
            WriteTokens(Path.Combine(tmp, ValFileName), sources, narrow, t =>
            {
                int nTrain = (int)TrainCount(t.Length, valFraction);
                return (nTrain, t.Length - nTrain);
            });
            CheckpointFolder.WriteDurable(Path.Combine(tmp, MetaFileName), JsonSerializer.SerializeToUtf8Bytes(meta, _jsonOptions));
        });
        return meta;
    }

    /// <summary>Tokens of a source of n tokens that go to training.</summary>
    public static long TrainCount(long n, double valFraction) => n - (long)Math.Floor(n * valFraction);

    private static void WriteTokens(string path, IReadOnlyList<(string Path, int[] Tokens)> sources, bool narrow,
        Func<int[], (int Start, int Count)> range)
    {
        using var fs = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
        var buffer = new byte[1 << 16];
        int per = narrow ? 2 : 4;
        foreach (var (_, tokens) in sources)
        {
            var (start, count) = range(tokens);
            for (int i = 0; i < count;)
            {
                int n = Math.Min(count - i, buffer.Length / per);
                for (int j = 0; j < n; j++)
                {
                    int t = tokens[start + i + j];
                    if (narrow) BinaryPrimitives.WriteUInt16LittleEndian(buffer.AsSpan(j * 2), (ushort)t);
                    else BinaryPrimitives.WriteInt32LittleEndian(buffer.AsSpan(j * 4), t);
                }
                fs.Write(buffer, 0, n * per);
                i += n;
            }
        }
        fs.Flush(flushToDisk: true);
    }

    private static void CheckFraction(double f)
    {
        if (!(f >= 0 && f < 1)) throw new LckvException($"the validation fraction must be in [0, 1), not {f}") { Settings = ["valFraction"] };
    }

    private static void CheckTarget(string outDir, bool force)
    {
        if (!force && Directory.Exists(outDir) && Directory.EnumerateFileSystemEntries(outDir).Any())
            throw new LckvException($"{outDir}: folder exists and is not empty, and it is replaced only when forced") { Settings = ["force"] };
        if (File.Exists(outDir)) throw new LckvException($"{outDir}: is a file, expected a folder");
    }

    /// <summary>Opens a prepared dataset folder (meta.json, train.bin, val.bin), checking sizes against the meta.</summary>
    public static TokenDataset Open(string folder)
    {
        string metaPath = Path.Combine(folder, MetaFileName);
        if (!Directory.Exists(folder)) throw new LckvException($"{folder}: data folder not found (prepare one with 'lckv data prepare')");
        if (!File.Exists(metaPath)) throw new LckvException($"{folder}: no {MetaFileName}; not a prepared dataset (see 'lckv data prepare')");
        DataMeta meta;
        try
        {
            meta = JsonSerializer.Deserialize<DataMeta>(File.ReadAllBytes(metaPath))
                   ?? throw new LckvException($"{metaPath}: empty");
        }
        catch (JsonException e)
        {
            throw new LckvException($"{metaPath}: malformed JSON: {SafeTensorsFile.JsonMessage(e)}", e);
        }
        if (meta.Format != DataMeta.CurrentFormat) throw new LckvException($"{metaPath}: unknown format '{meta.Format}' (expected {DataMeta.CurrentFormat})");
        if (meta.DType is not ("uint16" or "int32")) throw new LckvException($"{metaPath}: unknown dtype '{meta.DType}' (expected uint16 or int32)");
        if (meta.VocabSize <= 0) throw new LckvException($"{metaPath}: vocab_size must be positive, not {meta.VocabSize}");
        var train = TokenFile.Open(Path.Combine(folder, TrainFileName), meta.TrainTokens, meta.BytesPerToken);
        try
        {
            var val = TokenFile.Open(Path.Combine(folder, ValFileName), meta.ValTokens, meta.BytesPerToken);
            return new TokenDataset(Path.GetFullPath(folder), meta, train, val);
        }
        catch
        {
            train.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        Train.Dispose();
        Validation.Dispose();
    }
}

/// <summary>A memory-mapped file of little-endian token ids (uint16 or int32).</summary>
public sealed unsafe class TokenFile : IDisposable
{
    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private byte* _base;

    public string Path { get; }
    public long Count { get; }
    public int BytesPerToken { get; }

    private TokenFile(string path, long count, int bytesPerToken, MemoryMappedFile? map, MemoryMappedViewAccessor? view)
    {
        Path = path;
        Count = count;
        BytesPerToken = bytesPerToken;
        _map = map;
        _view = view;
        if (view is not null)
        {
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            _base = p + view.PointerOffset;
        }
    }

    public static TokenFile Open(string path, long count, int bytesPerToken)
    {
        if (!File.Exists(path)) throw new LckvException($"{path}: file not found");
        long length = new FileInfo(path).Length;
        if (length != count * bytesPerToken)
            throw new LckvException($"{path}: {length} bytes, but meta.json says {count} tokens of {bytesPerToken} bytes ({count * bytesPerToken}); truncated or mismatched");
        if (count == 0) return new TokenFile(path, 0, bytesPerToken, null, null);
        var map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        try
        {
            var view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            return new TokenFile(path, count, bytesPerToken, map, view);
        }
        catch
        {
            map.Dispose();
            throw;
        }
    }

    /// <summary>Copies tokens [start, start + destination.Length) into destination.</summary>
    public void Read(long start, Span<int> destination)
    {
        if (start < 0 || start + destination.Length > Count)
            throw new ArgumentOutOfRangeException(nameof(start), $"tokens [{start}, {start + destination.Length}) outside [0, {Count})");
        if (destination.Length == 0) return;
        ObjectDisposedException.ThrowIf(_base is null, this);
        if (BytesPerToken == 4)
        {
            new ReadOnlySpan<int>(_base + start * 4, destination.Length).CopyTo(destination);
            if (!BitConverter.IsLittleEndian) BinaryPrimitives.ReverseEndianness(destination, destination);
            return;
        }
        var src = new ReadOnlySpan<ushort>(_base + start * 2, destination.Length);
        for (int i = 0; i < destination.Length; i++)
            destination[i] = BitConverter.IsLittleEndian ? src[i] : BinaryPrimitives.ReverseEndianness(src[i]);
    }

    public void Dispose()
    {
        if (_view is not null && _base is not null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _base = null;
        }
        _view?.Dispose();
        _map?.Dispose();
    }
}

/// <summary>The serialisable position of a <see cref="BatchSampler"/>: its RNG state and the batches drawn.</summary>
public sealed record SamplerState(
    [property: JsonPropertyName("rng_state")] ulong RngState,
    [property: JsonPropertyName("batches")] long Batches);

/// <summary>
/// Training batches: each row is a window of seqLen consecutive tokens of train.bin starting at a uniformly random
/// position (seeded SplitMix64, rows drawn in order). The model predicts tokens 1..seqLen-1 of each window from the
/// ones before. Deterministic in (seed, batches drawn); <see cref="State"/> and <see cref="Restore"/> resume it exactly.
/// </summary>
public sealed class BatchSampler
{
    private readonly TokenFile _tokens;
    private TrainingRng _rng;

    public BatchSampler(TokenFile tokens, int batch, int seqLen, ulong seed)
    {
        if (batch < 1) throw new LckvException($"batch size must be at least 1, not {batch}") { Settings = ["batch"] };
        if (seqLen < 2) throw new LckvException($"sequence length must be at least 2, not {seqLen}") { Settings = ["seqLen"] };
        if (tokens.Count < seqLen)
            throw new LckvException($"{tokens.Path}: {tokens.Count} training tokens, fewer than one window of the sequence length {seqLen}") { Settings = ["seqLen"] };
        _tokens = tokens;
        Batch = batch;
        SeqLen = seqLen;
        _rng = new TrainingRng(seed);
    }

    public int Batch { get; }
    public int SeqLen { get; }
    public long Batches { get; private set; }

    public SamplerState State => new(_rng.State, Batches);

    public void Restore(SamplerState state)
    {
        _rng = new TrainingRng { State = state.RngState };
        Batches = state.Batches;
    }

    /// <summary>Fills destination [batch, seqLen] with the next batch.</summary>
    public void Next(Span<int> destination)
    {
        if (destination.Length != Batch * SeqLen)
            throw new ArgumentException($"destination holds {destination.Length} tokens, expected {Batch} x {SeqLen}", nameof(destination));
        ulong starts = (ulong)(_tokens.Count - SeqLen + 1);
        for (int b = 0; b < Batch; b++)
            _tokens.Read((long)_rng.NextBelow(starts), destination.Slice(b * SeqLen, SeqLen));
        Batches++;
    }
}

/// <summary>
/// Validation batches: val.bin read front to back in windows of seqLen tokens that overlap by one (stride seqLen-1),
/// so every token after the first is a target exactly once; rows are grouped into batches, a last partial batch is
/// dropped. The same tokens every time, so successive evaluations compare.
/// </summary>
public static class ValidationWindows
{
    /// <summary>Full batches available.</summary>
    public static long BatchCount(TokenFile tokens, int batch, int seqLen)
    {
        if (tokens.Count < seqLen) return 0;
        long windows = (tokens.Count - 1) / (seqLen - 1);
        return windows / batch;
    }

    /// <summary>Fills destination [batch, seqLen] with validation batch index (0-based).</summary>
    public static void Read(TokenFile tokens, int batch, int seqLen, long index, Span<int> destination)
    {
        for (int b = 0; b < batch; b++)
        {
            long window = index * batch + b;
            tokens.Read(window * (seqLen - 1), destination.Slice(b * seqLen, seqLen));
        }
    }
}
