import numpy as np
from scipy import stats

# Generate random data
data = np.random.normal(100, 15, 1000)

# Calculate statistics
mean = np.mean(data)
std = np.std(data)
median = np.median(data)

# Perform t-test
t_stat, p_value = stats.ttest_1samp(data, 100)

print(f"Mean: {mean:.2f}")
print(f"Std Dev: {std:.2f}")
print(f"Median: {median:.2f}")
print(f"T-statistic: {t_stat:.4f}")
print(f"P-value: {p_value:.4f}")
